"""Spherical linear interpolation of two tensors (the paper's merge), as mergekit 0.1.5 computes it.

Each tensor is one flat vector. With cosine c between the two, SLERP follows the
great circle: s0 = sin((1-t)θ)/sin θ, s1 = sin(tθ)/sin θ with θ = arccos c, applied
to the un-normalised tensors. When the two are nearly (anti-)colinear, |c| > 0.9995,
the circle is ill-conditioned and a plain lerp is used instead.

Whether a tensor takes the spherical or the linear branch, and the last bits of its
coefficients, depend on how the cosine's sums are rounded. To agree with mergekit
exactly, the reductions here follow its order: float32 (float64 for float64 inputs)
chunks of CHUNK elements; each chunk's norm, the norm of the chunk norms; each
chunk's sum of (x/‖a‖)·(y/‖b‖), the sum of those; coefficients in the working dtype.
Each step is the torch operation of the same name on the same shapes, so the rounding
is torch's own (summation order included). torch sums in parallel slices when it has
several threads, which changes the last bits: callers keep torch to one thread, as
mergekit runs under OMP_NUM_THREADS=1. The sums are accurate: chunk sums are
vectorised cascades, never one float32 running sum over a large tensor.

The functions are pure (tensors in, tensors out); `out=` buffers let a caller reuse
memory across chunks.
"""

from __future__ import annotations

DOT_THRESHOLD = 0.9995
EPS = 1e-8
CHUNK = 1 << 20  # elements per reduction chunk (mergekit 0.1.5's); part of the arithmetic


def chunk_bounds(numel: int, size: int | None = None):
    """[start, stop) of each reduction chunk."""
    size = size or CHUNK
    return [(start, min(start + size, numel)) for start in range(0, numel, size)]


def chunk_norm(x, dtype=None, out=None):
    """‖x‖ of one chunk (a 1-D tensor), as a (1, 1) tensor (into `out` when given); with `dtype`,
    of x cast to it (the same bits as casting first, faster than writing the cast copy)."""
    import torch

    return torch.linalg.vector_norm(x.view(1, -1), dim=1, keepdim=True, dtype=dtype, out=out)


def total_norm(chunk_norms, eps: float = EPS):
    """The tensor's norm from its chunk norms (a list of (1, 1) tensors, or them stacked: (n, 1, 1));
    the norm of the norms; below eps it is taken as 1."""
    import torch

    stacked = chunk_norms if isinstance(chunk_norms, torch.Tensor) else torch.stack(chunk_norms)
    norm = torch.linalg.vector_norm(stacked, dim=0)
    return torch.where(norm > eps, norm, 1)


def chunk_dot(x, y, norm_a, norm_b, scratch_x, scratch_y, out=None):
    """Σ (x/‖a‖)·(y/‖b‖) over one chunk, as a (1, 1) tensor (into `out` when given); the scratch
    buffers (x's size) are overwritten."""
    import torch

    torch.div(x.view(1, -1), norm_a, out=scratch_x.view(1, -1))
    torch.div(y.view(1, -1), norm_b, out=scratch_y.view(1, -1))
    torch.mul(scratch_x, scratch_y, out=scratch_x)
    return torch.sum(scratch_x.view(1, -1), dim=1, keepdim=True, out=out)


def quotient_products(x, y, norm_a, norm_b, out):
    """(x/‖a‖)·(y/‖b‖) elementwise into `out` (x and y are overwritten with the quotients): the terms
    of chunk_dot, computable piece by piece since each element is rounded on its own."""
    import torch

    torch.div(x.view(1, -1), norm_a, out=x.view(1, -1))
    torch.div(y.view(1, -1), norm_b, out=y.view(1, -1))
    return torch.mul(x, y, out=out)


def chunk_sum(products, out=None):
    """The sum of one chunk's products, as chunk_dot sums them, as a (1, 1) tensor."""
    import torch

    return torch.sum(products.view(1, -1), dim=1, keepdim=True, out=out)


def total_cosine(chunk_dots):
    """The cosine from the chunk dots (a list of (1, 1) tensors, or them stacked: (n, 1, 1)),
    clamped to [-1, 1], as a (1, 1) tensor."""
    import torch

    stacked = chunk_dots if isinstance(chunk_dots, torch.Tensor) else torch.stack(chunk_dots)
    return stacked.sum(dim=0).clamp(-1, 1)


def coefficients(cosine, t: float, dot_threshold: float = DOT_THRESHOLD):
    """(c0, c1, branch): the result is c0·v0 + c1·v1; c0, c1 are (1, 1) tensors of the cosine's dtype."""
    import torch

    t = torch.tensor([[t]], dtype=cosine.dtype)
    linear = cosine.abs() > dot_threshold
    theta = torch.acos(torch.where(linear, 0, cosine))
    sin_theta = torch.sin(theta)
    c0 = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    c1 = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
    return c0, c1, "lerp" if bool(linear) else "slerp"


def combine(x, y, c0, c1, out, scratch):
    """out = c0·x + c1·y for one chunk, rounded as mergekit rounds it (two products, then the sum)."""
    import torch

    torch.mul(x.view(1, -1), c0, out=out.view(1, -1))
    torch.mul(y.view(1, -1), c1, out=scratch.view(1, -1))
    return torch.add(out, scratch, out=out)


def slerp(v0, v1, t: float, eps: float = EPS):
    """SLERP of two torch tensors; v0 is the base (t = 0 end). Result in v0's dtype."""
    return slerp_with_stats(v0, v1, t, eps)[0]


def slerp_with_stats(v0, v1, t: float, eps: float = EPS, dot_threshold: float = DOT_THRESHOLD):
    """SLERP that also returns (cosine, branch), branch being "slerp" or "lerp".

    t = 0 and t = 1 return a copy of one parent."""
    import torch

    if v0.shape != v1.shape:
        raise ValueError(f"slerp needs tensors of one shape, got {tuple(v0.shape)} and {tuple(v1.shape)}")
    work = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a, b = v0.reshape(-1).to(work), v1.reshape(-1).to(work)
    bounds = chunk_bounds(a.numel())
    if not bounds:
        return v0.clone(), 0.0, "lerp"
    norm_a = total_norm([chunk_norm(a[lo:hi]) for lo, hi in bounds], eps)
    norm_b = total_norm([chunk_norm(b[lo:hi]) for lo, hi in bounds], eps)
    sx, sy = torch.empty(bounds[0][1], dtype=work), torch.empty(bounds[0][1], dtype=work)
    cosine = total_cosine([chunk_dot(a[lo:hi], b[lo:hi], norm_a, norm_b, sx[: hi - lo], sy[: hi - lo])
                           for lo, hi in bounds])
    c0, c1, branch = coefficients(cosine, t, dot_threshold)
    if t in (0.0, 1.0):
        return (v0 if t == 0.0 else v1.to(v0.dtype)).clone(), float(cosine), branch
    out = torch.empty_like(a)
    for lo, hi in bounds:
        combine(a[lo:hi], b[lo:hi], c0, c1, out[lo:hi], sx[: hi - lo])
    return out.to(v0.dtype).reshape(v0.shape), float(cosine), branch
