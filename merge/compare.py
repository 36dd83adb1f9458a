"""How closely one merged folder agrees with another (ours against mergekit's, say).

Elements are compared as numbers (-0 equals +0) and, where they differ, in bf16 ulps
counted across zero. The SLERP branch another tool took is read off its output, not
recomputed: its linear branch gives exactly bf16((1-t)·x + t·y) in float32, and a
spherical one does not (for any tensor of more than a few elements). A branch
mismatch is a tensor where exactly one of the two outputs is that linear result.
Used by tools/bench_merge.py and the parity tests; loads whole tensors (not for merging).
"""

from __future__ import annotations

import json
from pathlib import Path


def tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the .safetensors file holding it, for an indexed or a single-file folder."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {name: folder / shard for name, shard in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        return {name: folder / "model.safetensors" for name in f.keys()}


def load(files: dict[str, Path], name: str):
    from safetensors import safe_open

    with safe_open(files[name], "pt") as f:
        return f.get_tensor(name)


def ordered(t):
    """Bit patterns as integers that count ulps of the tensor's own dtype across zero (-0 and +0
    both 0): int16 patterns for bf16/f16, int32 for float32, int64 for float64."""
    import torch

    if t.element_size() == 2:
        bits = t.view(torch.int16).int()
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)
    bits = t.view(torch.int32 if t.element_size() == 4 else torch.int64).long()
    sign = 0x7FFFFFFF if t.element_size() == 4 else 0x7FFFFFFFFFFFFFFF
    return torch.where(bits < 0, -(bits & sign), bits)


def agreement(ours: Path, theirs: Path) -> dict:
    """Element by element, any method: how many are identical (NaN equals NaN), how many within one
    ulp of their dtype, the largest difference in ulps, and where they differ ({tensor: bool mask})."""
    mine, their_files = tensor_files(ours), tensor_files(theirs)
    if set(mine) != set(their_files):
        raise ValueError(f"different tensors: {sorted(set(mine) ^ set(their_files))[:5]}")
    total = identical = within = worst = 0
    differing = {}
    for name in sorted(mine):
        x, y = load(mine, name), load(their_files, name)
        if x.dtype != y.dtype or x.shape != y.shape:
            raise ValueError(f"{name}: {x.dtype}{list(x.shape)} here, {y.dtype}{list(y.shape)} there")
        equal = (x == y) | (x.isnan() & y.isnan())
        ulps = (ordered(x) - ordered(y)).abs()
        ulps[equal] = 0
        total, identical, within = total + x.numel(), identical + int(equal.sum()), within + int((ulps <= 1).sum())
        if not bool(equal.all()):
            differing[name] = ~equal
            worst = max(worst, int(ulps.max()))
    return {"elements": total, "identical_fraction": identical / max(total, 1),
            "within_one_ulp": within / max(total, 1), "max_ulp": worst, "differing": differing}


def linear_result(x, y, t: float, dtype):
    """bf16((1-t)·x + t·y) with float32 coefficients and rounding: SLERP's linear branch."""
    import torch

    from .methods.slerp import coefficients

    c0, c1, _ = coefficients(torch.ones(1, 1), t)
    return (c0 * x.float().reshape(1, -1) + c1 * y.float().reshape(1, -1)).to(dtype).reshape(x.shape)


def compare(ours: Path, theirs: Path, base: Path, other: Path) -> dict:
    """Agreement of our merged folder `ours` (with its merge_report.json) with `theirs`,
    both merged by SLERP from `base` (t = 0) and `other`."""
    import torch

    mine, their_files = tensor_files(ours), tensor_files(theirs)
    base_files, other_files = tensor_files(base), tensor_files(other)
    report = json.loads((Path(ours) / "merge_report.json").read_text())["tensors"]
    total = identical = max_ulp = 0
    mismatches = []
    for name in sorted(mine):
        x, y = load(mine, name), load(their_files, name)
        equal = x == y
        if not bool(equal.all()):
            max_ulp = max(max_ulp, int((ordered(x) - ordered(y)).abs()[~equal].max()))
        total, identical = total + x.numel(), identical + int(equal.sum())
        entry = report[name]
        if entry.get("method") != "slerp" or entry["t"] in (0.0, 1.0):
            continue  # endpoints: both branches give the parent
        lerp = linear_result(load(base_files, name), load(other_files, name), entry["t"], y.dtype)
        theirs_linear = torch.equal(y.view(torch.int16), lerp.view(torch.int16))
        ours_linear = torch.equal(x.view(torch.int16), lerp.view(torch.int16))
        if theirs_linear != ours_linear:
            mismatches.append({"name": name, "ours": entry["branch"], "theirs": "lerp" if theirs_linear else "slerp"})
    branches = [r.get("branch") for r in report.values() if r.get("branch")]
    return {"elements": total, "identical_fraction": identical / max(total, 1), "max_ulp": max_ulp,
            "branch_mismatches": mismatches, "branches": {k: branches.count(k) for k in sorted(set(branches))}}
