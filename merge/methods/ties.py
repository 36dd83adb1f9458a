"""TIES merging (Yadav et al. 2023): trim, elect sign, disjoint mean.

Task vectors interfere where they disagree. TIES keeps only each task vector's
largest-magnitude entries (density), elects per element the sign with the larger
weighted mass, and averages only the entries that agree with it. Trimming needs a
magnitude threshold over the whole tensor, so this method works on whole tensors
(torch), not chunks.
"""

from __future__ import annotations


def ties(base, tensors, weights, densities, lam: float = 1.0, normalize: bool = True):
    """TIES merge of `tensors` onto `base` (torch tensors, float32 or float64)."""
    deltas = [magnitude_trim(t - base, d) for t, d in zip(tensors, densities)]
    return base + lam * sign_consensus_mean(deltas, weights, normalize)


def magnitude_trim(delta, density: float):
    """Zero all but the round(density·n) largest-|x| entries (ties at the cut kept by index order)."""
    import torch

    if density >= 1.0:
        return delta
    keep = int(density * delta.numel())
    if keep <= 0:
        return torch.zeros_like(delta)
    flat = delta.reshape(-1)
    top = torch.topk(flat.abs(), keep, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[top] = True
    return (flat * mask).reshape(delta.shape)


def sign_consensus_mean(deltas, weights, normalize: bool = True):
    """Σ wᵢδᵢ over entries whose sign matches the elected one, / Σ wᵢ over those entries."""
    import torch

    weighted = torch.stack([d * w for d, w in zip(deltas, weights)])
    elected = torch.sign(weighted.sum(dim=0))
    agree = torch.sign(torch.stack(deltas)) == elected
    merged = (weighted * agree).sum(dim=0)
    if not normalize:
        return merged
    divisor = (torch.tensor(weights, dtype=merged.dtype).reshape(-1, *[1] * merged.dim()) * agree).sum(dim=0)
    divisor[divisor.abs() < 1e-8] = 1.0
    return merged / divisor
