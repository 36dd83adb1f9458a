"""Task arithmetic, TIES and DARE as mergekit 0.1.5 computes them, one chunk at a time.

All four are "generalized task arithmetic": each non-base model's task vector
δᵢ = xᵢ − base is optionally sparsified (TIES: keep the `density` fraction of largest
magnitudes; DARE: keep each entry with probability `density`), optionally rescaled to its
former L1 norm (`rescale`), multiplied by its weight; then either summed (task arithmetic,
dare_linear) or, with sign election (ties, dare_ties), summed over the entries whose sign
agrees with the sign of Σ wᵢδᵢ; optionally divided by the summed weights (`normalize`),
multiplied by `lambda` and added to the base.

mergekit does every step on whole tensors in the recipe's `dtype`: in bfloat16 each
subtraction, product, sum and quotient is rounded to bfloat16, and the weights themselves
are bfloat16 numbers. The functions here apply the same torch operations to the same
dtypes on chunks, which gives the same bits (all steps but the sparsification are
elementwise or sums over models, and the sparsification needs only whole-tensor
statistics, gathered in earlier passes: see kernels.py). `precise=True` instead keeps
every intermediate in float32 (float64 for float64 inputs) and unrounded parameters.

The magnitude cut: mergekit takes the first k = max(1, int(density·n)) entries of torch's
unstable descending argsort of |δ| (as float32). Entries of equal magnitude at the cut are
common in bfloat16 (task vectors are small multiples of one ulp), and which of them
torch's sort puts first depends on the sort implementation (x86-simd-sort on AVX2 or
AVX-512 CPUs, another on GPUs), not on the arithmetic. By default the earliest ones (by
index) are kept, which needs only a magnitude histogram; `mergekit_sort` takes torch's
own order on the whole tensor instead (same bits as mergekit on the same machine, ~16
bytes of memory per element).

DARE draws its masks as torch.bernoulli does on the CPU: one 32-bit Mersenne Twister
output per element, kept when (r & 0xFFFFFF)·2⁻²⁴ < p, p being the density as a number
of the working dtype (bfloat16 for bfloat16 tensors, else float32). mergekit draws from
torch's global generator, tensor by tensor in name order, model by model; seeded with
`--random-seed S` it is the stream of MT19937 seeded with S. Drawing the same stream
in the same order (engine.py hands each job its starting state) gives the same masks.
"""

from __future__ import annotations

import math

DENSITY_BITS = 24  # torch's uniform float32: the low 24 bits of one 32-bit draw
EPS = 1e-7  # mergekit's rescale guard


def torch_module():
    import torch

    return torch


def working_dtypes(dtype, precise: bool):
    """(compute dtype, DARE's mask dtype) for inputs cast to `dtype`."""
    torch = torch_module()
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    if precise:
        return wide, wide
    return dtype, (torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)


def weights_tensor(weights, dtype):
    """The weights as mergekit holds them: a tensor of the compute dtype (bfloat16 rounds 0.6 to 0.6015625)."""
    return torch_module().tensor(weights, dtype=dtype)


def keep_threshold(density: float, mask_dtype) -> int:
    """Keep an entry when its draw's low 24 bits are below this (torch's `uniform < p`, p in mask_dtype)."""
    torch = torch_module()
    p = float(torch.tensor(density, dtype=mask_dtype).float())
    return min(1 << DENSITY_BITS, math.ceil(p * (1 << DENSITY_BITS)))


def magnitude_keys(delta):
    """|δ| as float32 bit patterns (int32, monotonic in the magnitude; every NaN one key above inf)."""
    torch = torch_module()
    keys = delta.abs().float().view(torch.int32)
    return torch.where(keys > 0x7F800000, 0x7FC00000, keys)


def cut_from_histogram(counts, k: int) -> tuple[int, int, int]:
    """From counts per bucket (ascending key), the bucket holding the k-th largest key:
    (bucket, entries above it, entries to keep from it)."""
    above = 0
    for bucket in range(len(counts) - 1, -1, -1):
        count = int(counts[bucket])
        if above + count >= k:
            return bucket, above, k - above
        above += count
    return 0, above, 0


def combine(base, deltas, weights, *, consensus: bool, normalize: bool, lam: float):
    """base + λ·(normalized) Σ wᵢδᵢ over one chunk, with sign election when `consensus`;
    `deltas` are the sparsified task vectors and `weights` a 1-D tensor, all of one dtype."""
    torch = torch_module()
    stacked = torch.stack(deltas)
    w = weights.reshape(-1, *([1] * base.dim()))
    stacked.mul_(w)
    if consensus:
        majority = (stacked.sum(dim=0) >= 0).to(stacked.dtype) * 2 - 1
        agree = stacked.sign() == majority
        mixed = (stacked * agree).sum(dim=0)
        divisor = (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = stacked.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    return base + mixed


def random_draws(job) -> list[int]:
    """DARE's 32-bit draws for one job, per non-base model: one per element where its density is
    below 1 (density 1: mergekit returns δ untouched and draws nothing)."""
    return [job.numel if density < 1 else 0 for density in job.params["densities"]]


def linear_combine(xs, weights, *, normalize: bool, precise: bool):
    """mergekit's linear merge of one chunk: float32 (float64 for float64 inputs) fused
    multiply-adds Σ wᵢxᵢ, divided by Σwᵢ; `precise` accumulates in float64."""
    torch = torch_module()
    wide = torch.float64 if (precise or xs[0].dtype == torch.float64) else torch.float32
    w = torch.tensor(weights, dtype=wide)
    result = torch.zeros(xs[0].shape, dtype=wide)
    for x, coefficient in zip(xs, w.unbind(0)):
        result.addcmul_(x, coefficient.reshape(1))
    if normalize:
        result.div_(w.sum().reshape(1))
    return result
