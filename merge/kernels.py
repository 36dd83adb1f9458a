"""Computing one output tensor inside a worker: read, merge, write, in bounded memory.

A worker maps a window of each input tensor (at most MAP_WINDOW bytes; the page cache
is read in place, not copied), converts chunks to working floats in buffers it reuses,
and pwrites the result straight to its byte range of the output shard. Memory is
therefore a few buffers per worker whatever the model size: chunk buffers, plus for
SLERP tensors up to DECODED_BYTES per input one decoded copy kept across its passes.

SLERP runs on torch, op for op as mergekit 0.1.5 (methods/slerp.py); the engine
imports torch once before starting workers and keeps each process to one torch
thread. linear and task arithmetic stream in numpy; TIES and DARE need whole-tensor
ranks and masks and hold one tensor.
"""

from __future__ import annotations

import mmap
import os
import warnings

import numpy as np

from .checkpoint import DTYPE_SIZES
from .methods import slerp
from .methods.linear import linear
from .methods.task_arithmetic import task_arithmetic
from .plan import TensorJob

CHUNK = 1 << 18  # elements converted at a time by the elementwise methods
MAP_WINDOW = 64 << 20  # bytes of one input tensor mapped at a time
WRITE_PIECE = 256 << 10  # bytes per pwrite: writers of one shard share its inode lock; big pieces made the other spin (sys time 2-4x)
DECODED_BYTES = 4 << 20  # SLERP keeps an input's decoded floats across passes up to this size (one chunk: stays in cache)

_NUMPY_DTYPES = {"BF16": np.int16, "F16": np.float16, "F32": np.float32, "F64": np.float64}
_TORCH_DTYPES: dict = {}  # filled by use_torch()
_fds: dict[str, int] = {}
_buffers: dict[tuple, object] = {}


def needs_torch(jobs) -> bool:
    return any(job.method in TORCH_METHODS for job in jobs)


TORCH_METHODS = ("slerp", "ties", "dare_ties", "dare_linear")


def use_torch():
    """Import torch (once, before workers fork, so they inherit it) and return it."""
    import torch

    if not _TORCH_DTYPES:
        _TORCH_DTYPES.update(BF16=torch.bfloat16, F16=torch.float16, F32=torch.float32, F64=torch.float64)
    return torch


def single_threaded():
    """Keep torch to one intra-op thread while merging: the merge is parallel by process, and
    torch's reductions round differently when split over threads. Returns the previous count
    (for restore_threads); call it in each process, after any fork."""
    torch = use_torch()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    return previous


def restore_threads(previous: int) -> None:
    use_torch().set_num_threads(previous)


def run_job(job: TensorJob, out_paths: list[str]) -> dict:
    """Compute `job` and write it into its place in the output shard; return its report."""
    out_fd = _fd(out_paths[job.shard], os.O_WRONLY)
    if job.method == "copy":
        _copy_bytes(job.sources[0], out_fd, job.out_offset)
        return {"name": job.name, "method": "copy"}
    if job.method == "slerp":
        return _slerp_job(job, out_fd)
    if job.method in ("linear", "task_arithmetic"):
        _elementwise_job(job, out_fd)
    else:
        _whole_tensor_job(job, out_fd)
    return {"name": job.name, "method": job.method}


# ---- SLERP ---------------------------------------------------------------------------


def _slerp_job(job: TensorJob, out_fd: int) -> dict:
    """mergekit's three passes over the tensor in its chunks: norms, dot, output (methods/slerp.py)."""
    import torch

    t = job.params["t"]
    a, b = (_Source(s, slot) for slot, s in enumerate(job.sources))
    in_dtype = job.params.get("dtype") or a.info.dtype  # mergekit casts its inputs to the recipe's dtype first
    work = torch.float64 if in_dtype == "F64" else torch.float32
    cache = a.numel * work.itemsize <= DECODED_BYTES  # decode once and keep, or decode in each pass
    fa, fb = _Floats(a, in_dtype, work, cache), _Floats(b, in_dtype, work, cache)
    bounds = slerp.chunk_bounds(a.numel)
    report = {"name": job.name, "method": "slerp", "t": t, "cosine": 0.0, "branch": "lerp"}
    if not bounds:
        return report
    norms_a, norms_b = [], []
    for lo, hi in bounds:
        norms_a.append(slerp.chunk_norm(fa.chunk(lo, hi)))
        norms_b.append(slerp.chunk_norm(fb.chunk(lo, hi)))
    norm_a, norm_b = slerp.total_norm(norms_a), slerp.total_norm(norms_b)
    dots = []
    for lo, hi in bounds:
        x, y = fa.chunk(lo, hi), fb.chunk(lo, hi)
        sx, sy = x, y  # decoded for this pass only: quotients overwrite them
        if cache:  # kept floats are read again in the output pass: quotients go to scratch buffers
            sx, sy = (_tensor_buffer(("dot", k), slerp.CHUNK, work)[: hi - lo] for k in (0, 1))
        dots.append(slerp.chunk_dot(x, y, norm_a, norm_b, sx, sy))
    cosine = slerp.total_cosine(dots)
    c0, c1, branch = slerp.coefficients(cosine, t)
    report.update(cosine=float(cosine), branch=branch)
    if t in (0.0, 1.0) and a.info.dtype == in_dtype == job.out_dtype:
        _copy_bytes(job.sources[0 if t == 0.0 else 1], out_fd, job.out_offset)
        report["copied_from"] = "base" if t == 0.0 else "other"
        return report
    out = _Output(job, in_dtype, out_fd)
    for lo, hi in bounds:
        x, y = fa.chunk(lo, hi), fb.chunk(lo, hi)
        out.write(lo, slerp.combine(x, y, c0, c1, out=x, scratch=y))  # the last use of these floats: in place
    return report


class _Output:
    """Writes result chunks into the job's byte range, cast as mergekit casts: working floats ->
    the compute dtype -> the output dtype."""

    def __init__(self, job: TensorJob, in_dtype: str, fd: int):
        self.job, self.fd = job, fd
        self.rounded = _tensor_buffer(("round",), slerp.CHUNK, _TORCH_DTYPES[in_dtype])
        self.final = self.rounded if job.out_dtype == in_dtype else _tensor_buffer(("final",), slerp.CHUNK, _TORCH_DTYPES[job.out_dtype])

    def write(self, start: int, values) -> None:
        n = values.numel()
        self.rounded[:n].copy_(values.view(-1))
        if self.final is not self.rounded:
            self.final[:n].copy_(self.rounded[:n])
        _write(self.fd, self.job, start, self.final[:n].view(use_torch().uint8).numpy())


class _Floats:
    """A source tensor as chunks of working floats: decoded once into a kept buffer when it fits
    DECODED_BYTES (chunks then come from there in every pass), else decoded again in each pass."""

    def __init__(self, source: "_Source", in_dtype: str, work, cache: bool):
        self.source, self.in_dtype, self.work, self.cache = source, in_dtype, work, cache
        size = source.numel if cache else slerp.CHUNK
        self.buffer = _tensor_buffer(("floats", source.slot, cache), size, work)
        self.decoded = 0  # with a cache: elements [0, decoded) are in the buffer

    def chunk(self, lo: int, hi: int):
        if not self.cache:
            return self._decode(lo, hi, self.buffer[: hi - lo])
        if hi > self.decoded:
            self._decode(self.decoded, hi, self.buffer[self.decoded : hi])
            self.decoded = hi
        return self.buffer[lo:hi]

    def _decode(self, lo: int, hi: int, out):
        raw = self.source.tensor(lo, hi)
        if self.in_dtype != self.source.info.dtype:
            raw = raw.to(_TORCH_DTYPES[self.in_dtype])
        return out.copy_(raw)


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
    out = np.empty(info.numel, dtype=np.float32)
    source = _Source(info, slot=-1)
    for start, stop in _chunks(info.numel, max(1, MAP_WINDOW // source.itemsize)):
        _decode(source.elements(start, stop), info.dtype, out[start:stop])
    return out


# ---- reading, converting, writing ------------------------------------------------------


class _Source:
    """One input tensor, read through a mapped window of its file (at most MAP_WINDOW bytes,
    or one request if larger). Views handed out keep their window alive until dropped."""

    def __init__(self, info, slot: int):
        self.info, self.slot = info, slot
        self.numel = info.numel
        self.itemsize = DTYPE_SIZES[info.dtype]
        self.fd = _fd(str(info.file), os.O_RDONLY)
        self.lo = self.hi = 0  # elements [lo, hi) are mapped
        self.array = self.torch_view = None

    def elements(self, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) in the file's own encoding (bf16 as int16), read-only."""
        if start < self.lo or stop > self.hi:
            self._map(start, stop)
        return self.array[start - self.lo : stop - self.lo]

    def tensor(self, start: int, stop: int):
        """Elements [start, stop) as a torch tensor of the file's dtype, read-only."""
        if start < self.lo or stop > self.hi or self.torch_view is None:
            self._map(start, stop)
            torch = use_torch()
            with warnings.catch_warnings():  # torch cannot mark a tensor read-only and says so; nothing writes here
                warnings.simplefilter("ignore")
                view = torch.from_numpy(self.array)
            self.torch_view = view.view(torch.bfloat16) if self.info.dtype == "BF16" else view
        return self.torch_view[start - self.lo : stop - self.lo]

    def floats(self, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) as float32, in a buffer reused by the next call with this slot."""
        out = _buffer(("f32", self.slot), stop - start, np.float32)[: stop - start]
        _decode(self.elements(start, stop), self.info.dtype, out)
        return out

    def _map(self, start: int, stop: int) -> None:
        self.array = self.torch_view = None  # the old window goes when its last view does
        stop = max(stop, min(self.numel, start + MAP_WINDOW // self.itemsize))
        first = self.info.offset + start * self.itemsize
        aligned = first - first % mmap.ALLOCATIONGRANULARITY
        count = stop - start
        if count == 0:
            self.array = np.empty(0, dtype=_NUMPY_DTYPES[self.info.dtype])
        else:
            window = mmap.mmap(self.fd, first - aligned + count * self.itemsize, flags=mmap.MAP_SHARED | _POPULATE,
                               prot=mmap.PROT_READ, offset=aligned)
            self.array = np.frombuffer(window, dtype=_NUMPY_DTYPES[self.info.dtype], count=count, offset=first - aligned)
        self.lo, self.hi = start, stop


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # fault the window in with one call, not page by page


def _decode(raw: np.ndarray, dtype: str, out: np.ndarray) -> None:
    if dtype == "BF16":  # bf16 is the top half of a float32: widen, then shift (no casting loop)
        bits = out.view(np.uint32)
        np.copyto(bits, raw.view(np.uint16))
        np.left_shift(bits, 16, out=bits)
    elif dtype in ("F16", "F32", "F64"):
        np.copyto(out, raw, casting="unsafe")
    else:
        raise ValueError(f"cannot merge dtype {dtype}")


def _encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> the output dtype's bytes; bf16 rounds to nearest even, as torch does."""
    if dtype == "BF16":
        bits = x.view(np.uint32)
        tmp = _buffer(("enc",), x.size, np.uint32)[: x.size]
        np.right_shift(bits, 16, out=tmp)
        np.bitwise_and(tmp, 1, out=tmp)
        np.add(tmp, 0x7FFF, out=tmp)
        np.add(tmp, bits, out=tmp)
        np.right_shift(tmp, 16, out=tmp)
        out = _buffer(("out16",), x.size, np.uint16)[: x.size]
        np.copyto(out, tmp, casting="unsafe")
        if np.isnan(x).any():  # the +0x7FFF carry would turn some NaN payloads into ±0 / inf
            out[np.isnan(x)] = 0x7FC0
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
        written = os.pwrite(fd, view[:WRITE_PIECE], offset)
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
    buf = _buffers.get((key, dtype))
    if buf is None or buf.size < size:
        buf = _buffers[(key, dtype)] = np.empty(size, dtype=dtype)
    return buf


def _tensor_buffer(key: tuple, size: int, dtype):
    """A reused 1-D torch tensor of at least `size` elements."""
    buf = _buffers.get((key, dtype))
    if buf is None or buf.numel() < size:
        buf = _buffers[(key, dtype)] = use_torch().empty(size, dtype=dtype)
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
