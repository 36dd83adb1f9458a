"""Computing one output tensor inside a worker: read, merge, write, in bounded memory.

A worker maps a window of each input tensor (at most MAP_WINDOW bytes; the page cache
is read in place, not copied), converts chunks to working floats in buffers it reuses,
and pwrites the result straight to its byte range of the output shard. Memory is
therefore a few buffers per worker whatever the model size: chunk buffers, plus for
SLERP tensors up to DECODED_BYTES per input one decoded copy kept across its passes.

All methods run on torch, op for op as mergekit 0.1.5 (methods/slerp.py, methods/gta.py);
the engine imports torch once before starting workers and keeps each process to one
torch thread. SLERP makes three passes (norms, dot, output; the dot and output passes in
cache-sized pieces, and the output pass skipped when the linear branch was rightly
guessed and written during the dot pass). TIES and DARE, whose sparsification needs
whole-tensor statistics, make one to four statistics passes before the output pass
(histograms of |δ| for the magnitude cut; L1 sums for `rescale`, torch's own sums over
one scratch tensor of |δ| in 2 or 4 bytes per element); only `mergekit_sort` holds the
whole |δ| with its sort indices.

Each job also reports NaN/Inf in its inputs and output (counts), at no cost for SLERP
whose norms already tell whether an input is finite.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import warnings

import numpy as np

from . import methods
from .checkpoint import DTYPE_SIZES
from .methods import gta, slerp
from .plan import TensorJob

CHUNK = 1 << 18  # elements per chunk of the elementwise passes (a multiple of every SIMD width)
MAP_WINDOW = 64 << 20  # bytes of one input tensor mapped at a time (SLERP: its passes reuse the window)
SMALL_WINDOW = 16 << 20  # the same for the other methods, which map three or more inputs and make several passes
# bytes per pwrite: writers of one shard share its inode lock; big pieces made the other spin (sys time 2-4x)
WRITE_PIECE = 256 << 10
# SLERP keeps an input's decoded floats across passes up to this size (one chunk: stays in cache)
DECODED_BYTES = 4 << 20
# elements SLERP decodes and computes at a time in its dot and output passes (1 MB of floats: stays in cache)
PIECE = 1 << 18
FINITE_MAX = {"BF16": 3.3895313892515355e38, "F16": 65504.0, "F32": 3.4028234663852886e38,
              "F64": 1.7976931348623157e308}

_NUMPY_DTYPES = {"BF16": np.int16, "F16": np.float16, "F32": np.float32, "F64": np.float64}
_TORCH_DTYPES: dict = {}  # filled by use_torch()
_fds: dict[str, int] = {}
_buffers: dict[tuple, object] = {}
write_behind = False  # set by the engine when the output will be fsynced: start each tensor's writeback at once


def needs_torch(jobs) -> bool:
    """Whether any job runs a method's kernel (they all run on torch) rather than copying bytes."""
    return any(job.method != "copy" for job in jobs)


LEAN_IMPORT_STUBS = ("torch._meta_registrations",)
lean_import = False  # set by the command: see _lean_import


def use_torch():
    """Import torch (once, before workers fork, so they inherit it) and return it."""
    if lean_import and "torch" not in sys.modules:
        _lean_import()
    import torch

    if not _TORCH_DTYPES:
        _keep_freed_memory()
        _TORCH_DTYPES.update(BF16=torch.bfloat16, F16=torch.float16, F32=torch.float32, F64=torch.float64)
    return torch


class LeanImportFailed(RuntimeError):
    """torch would not import without the modules _lean_import leaves out; the command re-runs itself without it."""


def _lean_import() -> None:
    """Import torch without torch._meta_registrations (with the torch._decomp and torch._prims it pulls
    in: ~30% of the import's CPU time, serial before any worker starts). Those register Python meta
    kernels for tracing and torch.compile, which CPU kernels run eagerly never use. Only the command
    does this: it exits after the merge, whereas a caller of the Python API may need them later."""
    import types

    for name in LEAN_IMPORT_STUBS:
        sys.modules.setdefault(name, types.ModuleType(name))
    try:
        import torch  # noqa: F401
    except Exception as error:
        raise LeanImportFailed(f"{type(error).__name__}: {error}") from error


def _keep_freed_memory() -> None:
    """Have glibc's malloc keep freed blocks of up to 64 MB for reuse (mallopt M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD) instead of returning them to the system: torch's temporaries of a few MB per
    chunk then cost no fresh page faults. Silently nothing without glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


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


def run_job(job: TensorJob, out_paths: list[str], extra: dict | None = None) -> dict:
    """Compute `job` and write it into its place in the output shard; return its report.
    `extra` carries what the engine computes per job: a random method's generator states ("rng")."""
    out_fd = _fd(out_paths[job.shard], os.O_WRONLY)
    counts = _Nonfinite(len(job.sources))
    if job.method == "copy":
        _copy_bytes(job.sources[0], out_fd, job.out_offset)
        report = {"name": job.name, "method": "copy"}
    else:
        method = methods.get(job.method)
        report = method.kernel_function()(job, out_fd, counts, extra, **method.kernel_args)
    if job.tail is not None:
        _tail_rows(job, out_fd, counts)
    if counts.any():
        report["nonfinite"] = counts.report(job)
    if write_behind:
        _start_writeback(out_fd, job.out_offset, job.out_nbytes)
    return report


class _Nonfinite:
    """NaN/Inf counts of each input (merged rows and copied tail) and of the output."""

    def __init__(self, n_inputs: int):
        self.inputs, self.output = [0] * n_inputs, 0

    def any(self) -> bool:
        return bool(self.output or any(self.inputs))

    def report(self, job: TensorJob) -> dict:
        return {"inputs": {_parent(s): n for s, n in zip(job.sources, self.inputs) if n}, "output": self.output}


def _parent(info) -> str:
    return info.file.parent.name


def count_nonfinite(x) -> int:
    """NaN and ±Inf in a torch tensor; a finite sum (one fast reduction) proves there are none."""
    torch = use_torch()
    if x.numel() == 0:
        return 0
    if math.isfinite(float(x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32))):
        return 0
    return int(x.numel() - int(torch.isfinite(x).sum()))


# ---- SLERP ---------------------------------------------------------------------------


def slerp_job(job: TensorJob, out_fd: int, counts: _Nonfinite, extra: dict | None = None) -> dict:
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
    # Chunk norms go into one preallocated tensor: small results allocated between the chunks'
    # temporaries would pin those temporaries' memory until the tensor is done.
    norms = torch.empty((2, len(bounds), 1, 1), dtype=work)
    # norms straight off the file's bytes
    direct = not cache and a.info.dtype == in_dtype and in_dtype in ("BF16", "F16")
    for i, (lo, hi) in enumerate(bounds):
        if direct:
            slerp.chunk_norm(a.tensor(lo, hi), work, out=norms[0, i])
            slerp.chunk_norm(b.tensor(lo, hi), work, out=norms[1, i])
        else:
            slerp.chunk_norm(fa.chunk(lo, hi), out=norms[0, i])
            slerp.chunk_norm(fb.chunk(lo, hi), out=norms[1, i])
    norm_a, norm_b = slerp.total_norm(norms[0]), slerp.total_norm(norms[1])
    finite_in = bool(norms.isfinite().all())  # a NaN or Inf makes its chunk's norm non-finite
    if not finite_in:
        counts.inputs = [_count_source(s) for s in (a, b)]
        finite_in = not any(counts.inputs)  # else the squares overflowed: all finite after all
    dots = torch.empty((len(bounds), 1, 1), dtype=work)
    products = None if cache else _tensor_buffer(("products",), slerp.CHUNK, work)
    piece = min(PIECE, slerp.CHUNK)
    # Speculation: when a sample says the tensors are nearly colinear, the linear branch's output
    # (coefficients 1 - t and t, known in advance) is written during the dot pass, from the pieces
    # already in the cache; the output pass is then skipped if the exact cosine agrees, and
    # overwrites everything if not. Same bits either way.
    speculate = not cache and t not in (0.0, 1.0) and finite_in and _looks_linear(a, b, in_dtype, work)
    if speculate:
        lc0, lc1, _ = slerp.coefficients(torch.ones((1, 1), dtype=work), t)
        early = _Output(job, in_dtype, out_fd)
        scratch = [_tensor_buffer(("speculate", k), piece, work) for k in (0, 1)]
    for i, (lo, hi) in enumerate(bounds):
        if cache:  # kept floats are read again in the output pass: quotients go to scratch buffers
            sx, sy = (_tensor_buffer(("dot", k), slerp.CHUNK, work)[: hi - lo] for k in (0, 1))
            slerp.chunk_dot(fa.chunk(lo, hi), fb.chunk(lo, hi), norm_a, norm_b, sx, sy, out=dots[i])
            continue
        # Decoded and divided in pieces that stay in the CPU's cache; only the products of the whole
        # chunk are kept, for the one sum over the chunk that decides the bits.
        for piece_lo, piece_hi in _chunks(hi - lo, piece):
            x, y = fa.chunk(lo + piece_lo, lo + piece_hi), fb.chunk(lo + piece_lo, lo + piece_hi)
            if speculate:
                n = piece_hi - piece_lo
                early.write(lo + piece_lo, slerp.combine(x, y, lc0, lc1, out=scratch[0][:n], scratch=scratch[1][:n]))
            slerp.quotient_products(x, y, norm_a, norm_b, out=products[piece_lo:piece_hi])
        slerp.chunk_sum(products[: hi - lo], out=dots[i])
    cosine = slerp.total_cosine(dots)
    c0, c1, branch = slerp.coefficients(cosine, t)
    report.update(cosine=_json_float(float(cosine)), branch=branch)
    if t in (0.0, 1.0) and a.info.dtype == in_dtype == job.out_dtype:
        parent = job.sources[0 if t == 0.0 else 1]
        _copy_bytes(parent, out_fd, job.out_offset)
        report["copied_from"] = "base" if t == 0.0 else "other"
        counts.output = counts.inputs[0 if t == 0.0 else 1]
        return report
    # The output is finite when the inputs are and |c0|·‖a‖ + |c1|·‖b‖ (which bounds every
    # |c0·x + c1·y|) stays below the output dtype's largest number; else count it.
    bound = abs(float(c0)) * float(norm_a) + abs(float(c1)) * float(norm_b)
    check_output = not (finite_in and math.isfinite(bound) and bound < 0.99 * FINITE_MAX[job.out_dtype])
    if speculate and branch == "lerp" and not check_output:
        return report  # already written
    out = _Output(job, in_dtype, out_fd)
    for lo, hi in (bounds if cache else _chunks(a.numel, min(PIECE, slerp.CHUNK))):  # elementwise: any pieces will do
        x, y = fa.chunk(lo, hi), fb.chunk(lo, hi)
        result = slerp.combine(x, y, c0, c1, out=x, scratch=y)  # the last use of these floats: in place
        final = out.write(lo, result)
        if check_output:
            counts.output += count_nonfinite(final)
    return report


SAMPLE = 1 << 16  # elements of each input that _looks_linear reads


def _looks_linear(a: _Source, b: _Source, in_dtype: str, work) -> bool:
    """Whether the first SAMPLE elements of the two tensors are nearly colinear (|cosine| above
    SLERP's threshold, in float64): a cheap guess at the branch, for speculation only."""
    torch = use_torch()
    n = min(SAMPLE, a.numel)
    x = a.tensor(0, n).to(_TORCH_DTYPES[in_dtype]).double()
    y = b.tensor(0, n).to(_TORCH_DTYPES[in_dtype]).double()
    scale = float(torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y))
    return scale > 0 and abs(float(torch.dot(x, y))) / scale > slerp.DOT_THRESHOLD


def _json_float(value: float):
    """A float for strict JSON: NaN and ±Inf become None."""
    return value if math.isfinite(value) else None


def _count_source(source: _Source) -> int:
    total = 0
    for lo, hi in _chunks(source.numel):
        total += count_nonfinite(source.tensor(lo, hi))
    return total


class _Output:
    """Writes result chunks into the job's byte range, cast as mergekit casts: working floats ->
    the compute dtype -> the output dtype."""

    def __init__(self, job: TensorJob, in_dtype: str, fd: int):
        self.job, self.fd = job, fd
        size = max(slerp.CHUNK, CHUNK)
        self.rounded = _tensor_buffer(("round",), size, _TORCH_DTYPES[in_dtype])
        self.final = (self.rounded if job.out_dtype == in_dtype
                      else _tensor_buffer(("final",), size, _TORCH_DTYPES[job.out_dtype]))

    def write(self, start: int, values):
        """Write elements [start, start + n) of the result; returns them as written (output dtype)."""
        n = values.numel()
        self.rounded[:n].copy_(values.view(-1))
        if self.final is not self.rounded:
            self.final[:n].copy_(self.rounded[:n])
        _write(self.fd, self.job, start, self.final[:n].view(use_torch().uint8).numpy())
        return self.final[:n]


class _Floats:
    """A source tensor as chunks of working floats: decoded once into a kept buffer when it fits
    DECODED_BYTES (chunks then come from there in every pass), else decoded again in each pass."""

    def __init__(self, source: _Source, in_dtype: str, work, cache: bool):
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


# ---- linear and generalized task arithmetic (task_arithmetic, ties, dare_*) --------------


def _inputs(job: TensorJob):
    """The job's sources, and a function giving chunk [lo, hi) of each, cast to the recipe's dtype."""
    sources = [_Source(s, slot, min(MAP_WINDOW, SMALL_WINDOW)) for slot, s in enumerate(job.sources)]
    dtype = _TORCH_DTYPES[job.params.get("dtype") or sources[0].info.dtype]

    def load(lo: int, hi: int, count: bool = False):
        chunks = []
        for i, source in enumerate(sources):
            raw = source.tensor(lo, hi)
            if count:
                counts_in[i] += count_nonfinite(raw)
            chunks.append(raw.to(dtype))
        return chunks

    counts_in = [0] * len(sources)
    return sources, dtype, load, counts_in


def elementwise(job: TensorJob, out_fd: int, counts: _Nonfinite, combine, precise: bool = False) -> None:
    """Compute a method that is elementwise in its inputs: `combine` gets, chunk by chunk, a list
    with each source's chunk (base first when the method has one) cast to the recipe's dtype, and
    returns the merged chunk; it is cast to the recipe's dtype and then to the output dtype, as
    mergekit casts (`precise`: straight to the output dtype). NaN/Inf are counted."""
    sources, dtype, load, counts_in = _inputs(job)
    out = _Output(job, job.out_dtype if precise else job.params.get("dtype") or job.sources[0].dtype, out_fd)
    for lo, hi in _chunks(job.numel):
        merged = combine(load(lo, hi, count=True))
        counts.output += count_nonfinite(out.write(lo, merged if precise else merged.to(dtype)))
    counts.inputs = counts_in


def linear_job(job: TensorJob, out_fd: int, counts: _Nonfinite, extra: dict | None = None) -> dict:
    p = job.params
    elementwise(job, out_fd, counts,
                lambda xs: gta.linear_combine(xs, p["weights"], normalize=p["normalize"], precise=p["precise"]),
                precise=p["precise"])
    return {"name": job.name, "method": "linear", "weights": p["weights"]}


class _Model:
    """One non-base model of a generalized task arithmetic job: its sparsification and the
    whole-tensor statistics that sparsification needs."""

    def __init__(self, index: int, job: TensorJob, mask_dtype, rng_state, sparsify: str | None):
        p = job.params
        self.index, self.density = index, p["densities"][index]
        # density 1: mergekit returns δ untouched (no draws)
        self.kind = sparsify if sparsify and self.density < 1 else None
        self.rescale = bool(p["rescale"]) and self.kind is not None
        self.keep_below = gta.keep_threshold(self.density, mask_dtype) if self.kind == "random" else 0
        self.rng_state, self.generator = rng_state, None
        self.k = max(1, int(self.density * job.numel))
        self.cut = None  # magnitude: (key, entries to keep at that key); set after the statistics passes
        self.sort_mask = None  # magnitude with mergekit_sort: kept entries, from torch's own sort
        self.ties_seen = 0  # magnitude: entries at the cut key met so far in this pass
        self.ratio = None

    def restart(self) -> None:
        """Back to the job's first element (each pass draws DARE's stream from its start)."""
        self.ties_seen = 0
        if self.kind == "random":
            if self.rng_state is None:
                raise RuntimeError("DARE job without a generator state (the engine hands one to each job)")
            bit_generator = np.random.MT19937()
            bit_generator.state = self.rng_state
            self.generator = np.random.Generator(bit_generator)

    def random_keep(self, n: int):
        draws = self.generator.integers(0, 1 << 32, size=n, dtype=np.uint32)
        np.bitwise_and(draws, (1 << gta.DENSITY_BITS) - 1, out=draws)
        return use_torch().from_numpy(draws < self.keep_below)

    def magnitude_keep(self, delta, lo: int):
        torch = use_torch()
        if self.sort_mask is not None:
            return self.sort_mask[lo : lo + delta.numel()]
        key, take = self.cut
        keys = gta.magnitude_keys(delta)
        keep = keys > key
        at_cut = keys == key
        if take > self.ties_seen and bool(at_cut.any()):
            rank = torch.cumsum(at_cut, 0, dtype=torch.int64) + self.ties_seen
            keep |= at_cut & (rank <= take)
        self.ties_seen += int(at_cut.sum())
        return keep


def gta_job(job: TensorJob, out_fd: int, counts: _Nonfinite, extra: dict | None = None, *,
            sparsify: str | None, consensus: bool) -> dict:
    """Task arithmetic, TIES, DARE: statistics passes as the sparsification needs, then the output pass.
    sparsify: None (task arithmetic), "magnitude" (TIES) or "random" (DARE, with extra["rng"]: each
    model's generator state); consensus: sign election (TIES, dare_ties)."""
    torch = use_torch()
    p = job.params
    rng_states = (extra or {}).get("rng")
    sources, dtype, load, counts_in = _inputs(job)
    compute, mask_dtype = gta.working_dtypes(dtype, p["precise"])
    models = [_Model(i, job, mask_dtype, (rng_states or [None] * len(job.sources))[i], sparsify)
              for i in range(len(job.sources) - 1)]
    n = job.numel
    report = {"name": job.name, "method": job.method, "weights": p["weights"], "densities": p["densities"]}

    def deltas(lo, hi, count=False):
        chunks = load(lo, hi, count)
        base = chunks[0].to(compute)
        return base, [x.to(compute) - base for x in chunks[1:]]

    magnitude = [m for m in models if m.kind == "magnitude"]
    if p.get("mergekit_sort"):
        for m in magnitude:
            m.sort_mask = _torch_sort_mask(m, n, deltas)
    elif magnitude:
        _magnitude_cuts(magnitude, n, deltas, fine=compute != torch.bfloat16)
    for m in (m for m in models if m.rescale):
        m.ratio = _l1_ratio(m, n, deltas, mask_dtype if m.kind == "random" else compute)
    weights = (torch.tensor(p["weights"], dtype=torch.float64).to(compute) if p["precise"]
               else gta.weights_tensor(p["weights"], compute))
    out = _Output(job, job.out_dtype if p["precise"] else p["dtype"], out_fd)
    for m in models:
        m.restart()
    for lo, hi in _chunks(n):
        base, ds = deltas(lo, hi, count=True)
        for m in models:
            if m.kind is None:
                continue
            d = ds[m.index]
            if m.kind == "random":
                d = d.to(mask_dtype)
                keep = m.random_keep(hi - lo)
            else:
                keep = m.magnitude_keep(d, lo)
            d = d * keep
            if m.ratio is not None:
                d = d * m.ratio
            ds[m.index] = d.to(compute)
        merged = gta.combine(base, ds, weights, consensus=consensus, normalize=p["normalize"], lam=p["lambda"])
        counts.output += count_nonfinite(out.write(lo, merged))
    counts.inputs = counts_in
    if magnitude and not p.get("mergekit_sort"):
        report["kept_at_cut"] = [m.cut[1] for m in magnitude]  # of the entries equal to the k-th largest |δ|
    return report


def _l1_ratio(model: _Model, n: int, deltas, dtype):
    """mergekit's rescale factor ‖δ‖₁ / ‖sparsified δ‖₁, each sum torch's own over the whole tensor in
    `dtype` (its summation order decides the last bits): |δ| goes through one scratch tensor of `dtype`
    (2 or 4 bytes per element), filled chunk by chunk, once for each sum."""
    torch = use_torch()
    scratch = torch.empty(n, dtype=dtype)
    sums = []
    for sparsified in (False, True):
        model.restart()
        for lo, hi in _chunks(n):
            _, ds = deltas(lo, hi)
            d = ds[model.index].to(dtype)
            if sparsified:
                d = d * (model.random_keep(hi - lo) if model.kind == "random" else model.magnitude_keep(d, lo))
            torch.abs(d, out=scratch[lo:hi])
        sums.append(scratch.sum())
    del scratch
    before, after = sums
    if float(before) < gta.EPS or float(after) < gta.EPS:
        return None
    return before / after


def _magnitude_cuts(models: list[_Model], n: int, deltas, fine: bool) -> None:
    """The k-th largest |δ| of each model, exactly, from histograms of its float32 bit pattern:
    the top 16 bits in one pass, then (unless δ is bfloat16, whose low 16 bits are zero) the low
    16 bits of the entries in the chosen bucket in a second pass."""
    high = {m.index: np.zeros(1 << 15, dtype=np.int64) for m in models}
    for lo, hi in _chunks(n):
        _, ds = deltas(lo, hi)
        for m in models:
            keys = gta.magnitude_keys(ds[m.index])
            high[m.index] += np.bincount((keys >> 16).numpy(), minlength=1 << 15)
    chosen = {}
    for m in models:
        bucket, above, take = gta.cut_from_histogram(high[m.index], m.k)
        chosen[m.index] = (bucket, above)
        m.cut = (bucket << 16, take)
    if not fine:
        return
    low = {m.index: np.zeros(1 << 16, dtype=np.int64) for m in models}
    for lo, hi in _chunks(n):
        _, ds = deltas(lo, hi)
        for m in models:
            keys = gta.magnitude_keys(ds[m.index])
            inside = keys[(keys >> 16) == chosen[m.index][0]]
            if inside.numel():
                low[m.index] += np.bincount((inside & 0xFFFF).numpy(), minlength=1 << 16)
    for m in models:
        bucket, above = chosen[m.index]
        sub, _, take = gta.cut_from_histogram(low[m.index], m.k - above)
        m.cut = ((bucket << 16) | sub, take)


def _torch_sort_mask(model: _Model, n: int, deltas):
    """mergekit's own cut: the first k indices of torch's descending argsort of |δ| (float32)."""
    torch = use_torch()
    magnitudes = torch.empty(n, dtype=torch.float32)
    for lo, hi in _chunks(n):
        _, ds = deltas(lo, hi)
        magnitudes[lo:hi] = ds[model.index].abs().float()
    top = torch.argsort(magnitudes, descending=True)[: model.k]
    del magnitudes
    mask = torch.zeros(n, dtype=torch.bool)
    mask[top] = True
    return mask


def _tail_rows(job: TensorJob, out_fd: int, counts: _Nonfinite) -> None:
    """The rows only the grown vocabulary has, after the merged ones: a byte copy, or cast as the
    merged rows are (recipe dtype, then output dtype) when the dtypes differ."""
    tail = job.tail
    source = _Source(tail, slot=-2)
    dtype = job.params.get("dtype") or tail.dtype
    found = sum(count_nonfinite(source.tensor(lo, hi)) for lo, hi in _chunks(tail.numel))
    if tail.dtype == dtype == job.out_dtype:
        _copy_bytes(tail, out_fd, job.out_offset + job.numel * DTYPE_SIZES[job.out_dtype])
    else:
        out = _Output(job, dtype, out_fd)
        for lo, hi in _chunks(tail.numel):
            out.write(job.numel + lo, source.tensor(lo, hi).to(_TORCH_DTYPES[dtype]))
    donor = next((i for i, s in enumerate(job.sources) if s.file == tail.file), None)
    if donor is not None:
        counts.inputs[donor] += found
    counts.output += found


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing this tensor's pages to disk now (sync_file_range, SYNC_FILE_RANGE_WRITE), so the
    fsync before publishing waits only for the last ones; silently nothing where unsupported."""
    global _sync_file_range
    if _sync_file_range is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            function = libc.sync_file_range
            function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            _sync_file_range = function
        except (OSError, AttributeError):
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)


_sync_file_range = None


# ---- reading, converting, writing ------------------------------------------------------


class _Source:
    """One input tensor, read through a mapped window of its file (at most MAP_WINDOW bytes,
    or one request if larger). Views handed out keep their window alive until dropped."""

    def __init__(self, info, slot: int, window: int | None = None):
        self.info, self.slot, self.window = info, slot, window
        self.numel = info.numel
        self.itemsize = DTYPE_SIZES[info.dtype]
        self.fd = _fd(str(info.file), os.O_RDONLY)
        self.lo = self.hi = 0  # elements [lo, hi) are mapped
        self.array = self.torch_view = None

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

    def _map(self, start: int, stop: int) -> None:
        self.array = self.torch_view = None  # the old window goes when its last view does
        stop = max(stop, min(self.numel, start + (self.window or MAP_WINDOW) // self.itemsize))
        first = self.info.offset + start * self.itemsize
        aligned = first - first % mmap.ALLOCATIONGRANULARITY
        count = stop - start
        if count == 0:
            self.array = np.empty(0, dtype=_NUMPY_DTYPES[self.info.dtype])
        else:
            window = mmap.mmap(self.fd, first - aligned + count * self.itemsize, flags=mmap.MAP_SHARED | _POPULATE,
                               prot=mmap.PROT_READ, offset=aligned)
            self.array = np.frombuffer(window, dtype=_NUMPY_DTYPES[self.info.dtype], count=count,
                                       offset=first - aligned)
        self.lo, self.hi = start, stop


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # fault the window in with one call, not page by page


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
