"""Spherical linear interpolation of two tensors (the paper's merge).

Each tensor is one flat vector. With cosine c between the two, SLERP follows the
great circle: s0 = sin((1-t)θ)/sin θ, s1 = sin(tθ)/sin θ with θ = arccos c, applied
to the un-normalised tensors. When the two are nearly (anti-)colinear, |c| > 0.9995,
the circle is ill-conditioned and a plain lerp is used instead, as mergekit does.

Two things decide whether we agree with mergekit: the cosine must be accurate (a
float32 dot over a 100M-element tensor overestimates it by ~1e-3 and can flip the
branch), and the coefficients are computed in float32 the way mergekit computes
them. Reductions here are float64 sums of chunked float32 products.
"""

from __future__ import annotations

import math

import numpy as np

DOT_THRESHOLD = 0.9995
EPS = 1e-8
_CHUNK = 1 << 20


def slerp(v0, v1, t: float, eps: float = EPS):
    """SLERP of two torch tensors; v0 is the base (t = 0 end). Result in v0's dtype."""
    return slerp_with_stats(v0, v1, t, eps)[0]


def slerp_with_stats(v0, v1, t: float, eps: float = EPS, dot_threshold: float = DOT_THRESHOLD):
    """SLERP that also returns (cosine, branch), branch being "slerp" or "lerp"."""
    import torch

    if v0.shape != v1.shape:
        raise ValueError(f"slerp needs tensors of one shape, got {tuple(v0.shape)} and {tuple(v1.shape)}")
    work = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a, b = v0.reshape(-1), v1.reshape(-1)
    sums = [0.0, 0.0, 0.0]
    for start in range(0, a.numel(), _CHUNK):
        x, y = a[start : start + _CHUNK].to(work), b[start : start + _CHUNK].to(work)
        sums[0] += float((x * x).sum(dtype=torch.float64))
        sums[1] += float((y * y).sum(dtype=torch.float64))
        sums[2] += float((x * y).sum(dtype=torch.float64))
    cosine = cosine_from_sums(*sums, eps=eps)
    c0, c1, branch = slerp_coefficients(cosine, t, dot_threshold)
    if t in (0.0, 1.0):
        return (v0 if t == 0.0 else v1.to(v0.dtype)).clone(), cosine, branch
    out = torch.empty_like(v0)
    flat = out.view(-1)
    for start in range(0, a.numel(), _CHUNK):
        x, y = a[start : start + _CHUNK].to(work), b[start : start + _CHUNK].to(work)
        flat[start : start + _CHUNK] = combine(x, y, c0, c1)
    return out, cosine, branch


# ---- pure math -------------------------------------------------------------------


def cosine_from_sums(sum_aa: float, sum_bb: float, sum_ab: float, eps: float = EPS) -> float:
    """Cosine from accurate sums; a norm below eps is not divided by (all-zero tensors)."""
    norm_a, norm_b = math.sqrt(sum_aa), math.sqrt(sum_bb)
    norm_a = norm_a if norm_a > eps else 1.0
    norm_b = norm_b if norm_b > eps else 1.0
    return min(1.0, max(-1.0, sum_ab / (norm_a * norm_b)))


def slerp_coefficients(cosine: float, t: float, dot_threshold: float = DOT_THRESHOLD) -> tuple[float, float, str]:
    """(c0, c1, branch) so that the result is c0·v0 + c1·v1, computed in float32 like mergekit."""
    f32 = np.float32
    dot, t32 = f32(cosine), f32(t)
    if abs(dot) > f32(dot_threshold):
        return float(f32(1) - t32), float(t32), "lerp"
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    c0 = np.sin((f32(1) - t32) * theta) / sin_theta
    c1 = np.sin(t32 * theta) / sin_theta
    return float(f32(c0)), float(f32(c1)), "slerp"


def combine(x, y, c0: float, c1: float):
    """c0·x + c1·y, in the order mergekit rounds it (two products, then the sum)."""
    return x * c0 + y * c1
