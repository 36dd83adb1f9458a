"""Computing one output tensor inside a worker: read, merge, write, in bounded memory.

A worker reads its inputs with pread into buffers it reuses, converts a chunk at a
time to float32, and pwrites the result straight to its byte range of the output
shard. Memory is therefore a few chunk buffers per worker (plus, for tensors up to
WHOLE_TENSOR_BYTES, one read-once copy of the raw inputs), whatever the model size.
SLERP needs the tensor's norms and dot before its first output element, so it makes
two passes: statistics, then output.

numpy does the streaming math (it imports in a tenth of the time torch takes, which
matters when a whole merge lasts seconds); torch is imported only for the methods
that need whole-tensor operations (TIES, DARE) and for the mergekit-exact mode.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from .methods.linear import linear
from .methods.slerp import DOT_THRESHOLD, EPS, combine, cosine_from_sums, slerp_coefficients
from .methods.task_arithmetic import task_arithmetic
from .plan import TensorJob

CHUNK = 1 << 18  # elements converted to float32 at a time
WHOLE_TENSOR_BYTES = 48 << 20  # inputs up to this size are read once, not once per pass
EXACT_CHUNK = 1 << 20  # mergekit 0.1.5's chunk, for the bit-for-bit mode

_fds: dict[str, int] = {}
_buffers: dict[tuple, np.ndarray] = {}


def run_job(job: TensorJob, out_paths: list[str], exact: bool = False) -> dict:
    """Compute `job` and write it into its place in the output shard; return its report."""
    out_fd = _fd(out_paths[job.shard], os.O_WRONLY)
    if job.method == "copy":
        _copy_bytes(job.sources[0], out_fd, job.out_offset)
        return {"name": job.name, "method": "copy"}
    if job.method == "slerp":
        return _slerp_job(job, out_fd, exact)
    if job.method in ("linear", "task_arithmetic"):
        _elementwise_job(job, out_fd)
    else:
        _whole_tensor_job(job, out_fd)
    return {"name": job.name, "method": job.method}


# ---- SLERP ---------------------------------------------------------------------------


def _slerp_job(job: TensorJob, out_fd: int, exact: bool) -> dict:
    t = job.params["t"]
    a, b = (_Source(s, slot) for slot, s in enumerate(job.sources))
    sums = [0.0, 0.0, 0.0]
    if exact:
        cosine, c0, c1, branch = _exact_stats(a, b, t)
    else:
        for start, stop in _chunks(a.numel):
            x, y = a.floats(start, stop), b.floats(start, stop)
            _accumulate_dots(x, y, sums)
        cosine = cosine_from_sums(*sums, eps=EPS)
        c0, c1, branch = slerp_coefficients(cosine, t, DOT_THRESHOLD)
    report = {"name": job.name, "method": "slerp", "t": t, "cosine": cosine, "branch": branch}
    if t in (0.0, 1.0) and job.sources[0].dtype == job.out_dtype and not exact:  # exact mode keeps mergekit's -0 + 0
        _copy_bytes(job.sources[0 if t == 0.0 else 1], out_fd, job.out_offset)
        report["copied_from"] = "base" if t == 0.0 else "other"
        return report
    if exact:
        _exact_output(a, b, c0, c1, job, out_fd)
        return report
    finite = all(np.isfinite(s) for s in sums)  # finite inputs give a finite output
    c0, c1 = np.float32(c0), np.float32(c1)
    for start, stop in _chunks(a.numel):
        x, y = a.floats(start, stop), b.floats(start, stop)
        np.multiply(x, c0, out=x)
        np.multiply(y, c1, out=y)
        np.add(x, y, out=x)
        _write(out_fd, job, start, _encode(x, job.out_dtype, finite))
    return report


def _accumulate_dots(x: np.ndarray, y: np.ndarray, sums: list[float]) -> None:
    """‖x‖², ‖y‖², x·y of one chunk, in float64 (a float32 dot drifts by ~1e-6 already at 16K elements)."""
    x64 = _buffer(("f64", 0), x.size, np.float64)[: x.size]
    y64 = _buffer(("f64", 1), y.size, np.float64)[: y.size]
    np.copyto(x64, x)
    np.copyto(y64, y)
    sums[0] += float(_dot(x64, x64))
    sums[1] += float(_dot(y64, y64))
    sums[2] += float(_dot(x64, y64))


def _einsum_dot(x: np.ndarray, y: np.ndarray) -> float:
    return np.einsum("i,i->", x, y)


_dot = np.dot
_blas_limit = None


def single_threaded_blas():
    """Keep BLAS to one thread while merging: the merge is already parallel by process, and
    OpenBLAS spinning threads on a busy machine made each dot ~100x slower (measured). Without
    threadpoolctl, dots fall back to numpy's own einsum loop (no BLAS, ~2x slower than one
    BLAS thread). Returns a context manager; entering is optional for worker processes."""
    global _dot, _blas_limit
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        _dot = _einsum_dot
        return contextlib.nullcontext()
    _blas_limit = threadpool_limits(limits=1, user_api="blas")
    return _blas_limit


def _exact_stats(a: "_Source", b: "_Source", t: float):
    """mergekit 0.1.5's reductions, op for op: chunk norms, norm of norms, dot of normalised chunks."""
    import torch

    norms_a, norms_b = [], []
    for start, stop in _chunks(a.numel, EXACT_CHUNK):
        x, y = (torch.from_numpy(s.floats(start, stop)).reshape(1, -1) for s in (a, b))
        norms_a.append(torch.linalg.vector_norm(x, dim=1, keepdim=True))
        norms_b.append(torch.linalg.vector_norm(y, dim=1, keepdim=True))
    norm_a = torch.linalg.vector_norm(torch.stack(norms_a), dim=0)
    norm_b = torch.linalg.vector_norm(torch.stack(norms_b), dim=0)
    norm_a = torch.where(norm_a > EPS, norm_a, 1)
    norm_b = torch.where(norm_b > EPS, norm_b, 1)
    dots = []
    for start, stop in _chunks(a.numel, EXACT_CHUNK):
        x, y = (torch.from_numpy(s.floats(start, stop)).reshape(1, -1) for s in (a, b))
        dots.append(((x / norm_a) * (y / norm_b)).sum(dim=1, keepdim=True))
    dot = torch.stack(dots).sum(dim=0).clamp(-1, 1)
    t32 = torch.tensor([[t]], dtype=torch.float32)
    linear_branch = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear_branch, 0, dot))
    sin_theta = torch.sin(theta)
    c0 = torch.where(linear_branch, 1 - t32, torch.sin((1 - t32) * theta) / sin_theta)
    c1 = torch.where(linear_branch, t32, torch.sin(t32 * theta) / sin_theta)
    return float(dot), c0, c1, "lerp" if bool(linear_branch) else "slerp"


def _exact_output(a: "_Source", b: "_Source", c0, c1, job: TensorJob, out_fd: int) -> None:
    import torch

    out_dtype = _torch_dtype(job.out_dtype)
    for start, stop in _chunks(a.numel, EXACT_CHUNK):
        x, y = (torch.from_numpy(s.floats(start, stop)).reshape(1, -1) for s in (a, b))
        _write(out_fd, job, start, (c0 * x + c1 * y).to(out_dtype).reshape(-1).view(torch.uint8).numpy())


def _torch_dtype(name: str):
    import torch

    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}[name]


# ---- other methods ---------------------------------------------------------------------


def _elementwise_job(job: TensorJob, out_fd: int) -> None:
    sources = [_Source(s, slot) for slot, s in enumerate(job.sources)]
    p = job.params
    for start, stop in _chunks(sources[0].numel):
        xs = [s.floats(start, stop) for s in sources]
        if job.method == "linear":
            merged = linear(xs, p["weights"], p["normalize"])
        else:
            merged = task_arithmetic(xs[0], xs[1:], p["weights"], p["lambda"], p["normalize"])
        _write(out_fd, job, start, _encode(np.asarray(merged, dtype=np.float32), job.out_dtype))


def _whole_tensor_job(job: TensorJob, out_fd: int) -> None:
    """TIES and DARE need whole-tensor ranks and masks: load the tensor (documented limit)."""
    import torch

    from .methods.dare import dare
    from .methods.ties import ties

    tensors = [torch.from_numpy(_read_whole_floats(s)).reshape(s.shape) for s in job.sources]
    p = job.params
    if job.method == "ties":
        merged = ties(tensors[0], tensors[1:], p["weights"], p["densities"], p["lambda"], p["normalize"])
    else:
        merged = dare(tensors[0], tensors[1:], p["weights"], p["densities"], seed=p["seed"], tensor_name=job.name,
                      lam=p["lambda"], sign_election=job.method == "dare_ties", normalize=p["normalize"])
    flat = merged.reshape(-1).to(torch.float32).numpy()
    for start, stop in _chunks(flat.size):
        _write(out_fd, job, start, _encode(flat[start:stop].copy(), job.out_dtype))


def _read_whole_floats(info) -> np.ndarray:
    raw = np.empty(info.nbytes, dtype=np.uint8)
    _pread_into(_fd(str(info.file), os.O_RDONLY), raw, info.offset)
    out = np.empty(info.numel, dtype=np.float32)
    _decode(raw, info.dtype, out)
    return out


# ---- reading, converting, writing ------------------------------------------------------


class _Source:
    """One input tensor, read either once whole (small) or per chunk (large)."""

    def __init__(self, info, slot: int):
        self.info, self.slot = info, slot
        self.numel = info.numel
        self.itemsize = info.nbytes // max(info.numel, 1)
        self.fd = _fd(str(info.file), os.O_RDONLY)
        self.whole = None
        if info.nbytes <= WHOLE_TENSOR_BYTES:
            self.whole = _buffer(("whole", slot), WHOLE_TENSOR_BYTES, np.uint8)[: info.nbytes]
            _pread_into(self.fd, self.whole, info.offset)

    def raw(self, start: int, stop: int) -> np.ndarray:
        lo, hi = start * self.itemsize, stop * self.itemsize
        if self.whole is not None:
            return self.whole[lo:hi]
        buf = _buffer(("raw", self.slot), hi - lo, np.uint8)[: hi - lo]
        _pread_into(self.fd, buf, self.info.offset + lo)
        return buf

    def floats(self, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) as float32, in a buffer reused by the next call with this slot."""
        out = _buffer(("f32", self.slot), stop - start, np.float32)[: stop - start]
        _decode(self.raw(start, stop), self.info.dtype, out)
        return out


def _decode(raw: np.ndarray, dtype: str, out: np.ndarray) -> None:
    if dtype == "BF16":
        np.left_shift(raw.view(np.uint16), 16, out=out.view(np.uint32), dtype=np.uint32)
    elif dtype == "F16":
        np.copyto(out, raw.view(np.float16))
    elif dtype == "F32":
        np.copyto(out, raw.view(np.float32))
    elif dtype == "F64":
        np.copyto(out, raw.view(np.float64), casting="unsafe")
    else:
        raise ValueError(f"cannot merge dtype {dtype}")


def _encode(x: np.ndarray, dtype: str, finite: bool = False) -> np.ndarray:
    """float32 -> the output dtype's bytes; bf16 rounds to nearest even, as torch does.

    `finite` promises no NaN in `x` (SLERP knows it from its sums) and skips that check."""
    if dtype == "BF16":
        bits = x.view(np.uint32)
        tmp = _buffer(("enc",), x.size, np.uint32)[: x.size]
        np.right_shift(bits, 16, out=tmp)
        np.bitwise_and(tmp, 1, out=tmp)
        np.add(tmp, 0x7FFF, out=tmp)
        np.add(tmp, bits, out=tmp)
        out = _buffer(("out16",), x.size, np.uint16)[: x.size]
        np.copyto(out, tmp.view(np.uint16)[1::2])
        if not finite:  # the +0x7FFF carry would turn some NaN payloads into ±0 / inf
            nan = np.isnan(x)
            out[nan] = 0x7FC0
        return out.view(np.uint8)
    if dtype == "F16":
        return x.astype(np.float16).view(np.uint8)
    if dtype == "F32":
        return x.view(np.uint8)
    if dtype == "F64":
        return x.astype(np.float64).view(np.uint8)
    raise ValueError(f"cannot write dtype {dtype}")


def _write(fd: int, job: TensorJob, start_element: int, data: np.ndarray) -> None:
    itemsize = job.out_nbytes // max(_numel(job.shape), 1)
    offset = job.out_offset + start_element * itemsize
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _copy_bytes(info, out_fd: int, out_offset: int) -> None:
    """A parent's tensor verbatim: a kernel-side copy, no user-space buffer."""
    in_fd = _fd(str(info.file), os.O_RDONLY)
    done = 0
    while done < info.nbytes:
        n = os.copy_file_range(in_fd, out_fd, info.nbytes - done, info.offset + done, out_offset + done)
        if n == 0:
            raise OSError(f"{info.file}: unexpected end of file while copying tensor {info.name!r}")
        done += n


def _pread_into(fd: int, buf: np.ndarray, offset: int) -> None:
    view = memoryview(buf).cast("B")
    while view:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise OSError(f"unexpected end of file at byte {offset}")
        view, offset = view[n:], offset + n


def _chunks(numel: int, size: int | None = None):
    size = size or CHUNK  # read at call time, so tests can shrink CHUNK
    for start in range(0, numel, size):
        yield start, min(start + size, numel)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _buffer(key: tuple, size: int, dtype) -> np.ndarray:
    buf = _buffers.get(key)
    if buf is None or buf.size < size:
        buf = _buffers[key] = np.empty(size, dtype=dtype)
    return buf


def _fd(path: str, flags: int) -> int:
    key = f"{flags}:{path}"
    if key not in _fds:
        _fds[key] = os.open(path, flags)
    return _fds[key]


def close_files() -> None:
    """Close the cached descriptors (the engine calls this when it runs jobs in-process)."""
    for fd in _fds.values():
        os.close(fd)
    _fds.clear()
