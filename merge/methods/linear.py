"""Weighted average of several models ("model soups").

Elementwise, so it streams: the engine calls `linear` chunk by chunk with numpy
arrays; it works the same on torch tensors.
"""

from __future__ import annotations


def linear(tensors, weights, normalize: bool = True):
    """Σ wᵢ·xᵢ, divided by Σ wᵢ when `normalize` (and that sum is not ~0)."""
    total = tensors[0] * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:]):
        total = total + tensor * weight
    divisor = sum(weights)
    if normalize and abs(divisor) > 1e-8:
        total = total / divisor
    return total
