"""DARE (Yu et al. 2023): drop task-vector entries at random, rescale the survivors.

Each entry of a task vector is kept with probability `density` and scaled by
1/density, so its expectation is unchanged; then the vectors are combined linearly
(dare_linear) or with TIES sign election (dare_ties). The random mask is drawn from
a generator seeded by (seed, tensor name, model index), so a merge is reproducible
whatever the number of workers or the order tensors are processed in.
"""

from __future__ import annotations

import zlib

from .ties import sign_consensus_mean


def dare(base, tensors, weights, densities, *, seed: int, tensor_name: str, lam: float = 1.0, sign_election: bool = True, normalize: bool = True):
    """DARE merge of `tensors` onto `base` (torch tensors)."""
    deltas = [random_drop(t - base, d, stream_seed(seed, tensor_name, i)) for i, (t, d) in enumerate(zip(tensors, densities))]
    if sign_election:
        return base + lam * sign_consensus_mean(deltas, weights, normalize)
    merged = sum(d * w for d, w in zip(deltas, weights))
    if normalize and abs(sum(weights)) > 1e-8:
        merged = merged / sum(weights)
    return base + lam * merged


def random_drop(delta, density: float, seed: int):
    """Keep each entry with probability `density`, scaled by 1/density."""
    import torch

    if density >= 1.0:
        return delta
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(delta.shape, generator=generator) < density
    return delta * keep / density


def stream_seed(seed: int, tensor_name: str, model_index: int) -> int:
    """A stable 63-bit seed per (seed, tensor, model): independent of process and order."""
    return (seed * 1_000_003 + zlib.crc32(f"{tensor_name}#{model_index}".encode())) & ((1 << 63) - 1)
