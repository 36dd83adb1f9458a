"""A whole-tensor reference for linear, task arithmetic, TIES and DARE, written from the
arithmetic mergekit 0.1.5 performs (each step a torch operation on tensors of the recipe's
dtype, DARE drawing torch.bernoulli masks from one generator through the tensors in name
order), with TIES keeping the earliest of equal magnitudes at the cut. Used when mergekit
itself is not installed."""

from __future__ import annotations

import torch


def linear(tensors, weights, normalize=True):
    dtype = tensors[0].dtype
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    w = torch.tensor(weights, dtype=wide)
    result = torch.zeros(tensors[0].shape, dtype=wide)
    for tensor, coefficient in zip(tensors, w):
        result.addcmul_(tensor, coefficient)
    if normalize:
        result /= w.sum()
    return result.to(dtype)


def _l1(delta, mask):
    masked = delta * mask
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def task_vectors(method, base, tensors, densities, rescale, generator):
    out = torch.empty((len(tensors), *base.shape), dtype=base.dtype)
    for i, (tensor, density) in enumerate(zip(tensors, densities)):
        delta = tensor - base
        if method == "ties" and density < 1:
            k = max(1, int(density * delta.numel()))
            order = torch.argsort(delta.abs().reshape(-1).float(), descending=True, stable=True)[:k]
            mask = torch.zeros(delta.numel(), dtype=delta.dtype)
            mask[order] = 1
            mask = mask.reshape(delta.shape)
            delta = _l1(delta, mask) if rescale else delta * mask
        elif method.startswith("dare") and density < 1:
            work = delta.dtype if delta.dtype == torch.bfloat16 else torch.float32
            mask = torch.bernoulli(torch.full(delta.shape, density, dtype=work), generator=generator)
            d = delta.to(work)
            delta = (_l1(d, mask) if rescale else d * mask).to(delta.dtype)
        out[i] = delta
    return out


def generalized_task_arithmetic(method, base, tensors, weights, densities, *, normalize, rescale, lam, generator=None):
    deltas = task_vectors(method, base, tensors, densities, rescale, generator)
    w = torch.tensor(weights, dtype=deltas.dtype).reshape(-1, *([1] * base.dim()))
    deltas.mul_(w)
    if method in ("ties", "dare_ties"):
        majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
        agree = deltas.sign() == majority
        mixed = (deltas * agree).sum(dim=0)
        divisor = (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    return base + mixed
