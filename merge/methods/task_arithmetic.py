"""Task arithmetic: base + λ·Σ wᵢ·(θᵢ − base).

Each fine-tune minus the base is a "task vector"; adding weighted task vectors back
onto the base combines what the fine-tunes learned. Elementwise, so it streams.
"""

from __future__ import annotations


def task_arithmetic(base, tensors, weights, lam: float = 1.0, normalize: bool = False):
    """base + lam·Σ wᵢ(xᵢ − base), the sum divided by Σ wᵢ when `normalize`."""
    delta = (tensors[0] - base) * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:]):
        delta = delta + (tensor - base) * weight
    divisor = sum(weights)
    if normalize and abs(divisor) > 1e-8:
        delta = delta / divisor
    return base + delta * lam
