"""Parity with mergekit 0.1.5 on tiny models: same branch per tensor, at most 1 bf16
ulp apart on ≥ 99.99% identical elements, and bit-identical in --exact mode."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import load_tensors, slerp_config

from hpcadapt_merge import run_merge

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("mergekit") is None, reason="mergekit is not installed (pip install mergekit==0.1.5)")]


@pytest.fixture(scope="module")
def mergekit_out(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mergekit")
    (folder / "recipe.yml").write_text(yaml.safe_dump(slerp_config(models)))  # absolute paths: mergekit reads others as hub ids
    command = shutil.which("mergekit-yaml", path=str(Path(sys.executable).parent)) or shutil.which("mergekit-yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([command, str(folder / "recipe.yml"), str(folder / "out")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return load_tensors(folder / "out")


def mergekit_branch(a: torch.Tensor, b: torch.Tensor) -> str:
    """Which branch mergekit's own slerp takes: at t = 0.5 in float32 the two differ by ≥ 1e-4 relative."""
    from mergekit.merge_methods.slerp import slerp as mergekit_slerp

    x, y = a.float().reshape(1, -1), b.float().reshape(1, -1)
    out = mergekit_slerp(torch.tensor([0.5]), x, y)
    return "lerp" if torch.allclose(out, 0.5 * x + 0.5 * y, rtol=1e-6, atol=0) else "slerp"


def test_default_mode_agrees_with_mergekit(models, tmp_path, mergekit_out):
    run_merge(slerp_config(models), tmp_path / "ours", progress=False)
    ours = load_tensors(tmp_path / "ours")
    report = __import__("json").loads((tmp_path / "ours" / "merge_report.json").read_text())["tensors"]
    base, tuned = load_tensors(models["base"]), load_tensors(models["tuned"])
    total = same = 0
    for name, theirs in mergekit_out.items():
        assert report[name]["branch"] == mergekit_branch(base[name], tuned[name]), name
        equal = ours[name] == theirs  # numeric equality: -0 and +0 agree
        ulps = (ours[name].view(torch.int16).int() - theirs.view(torch.int16).int()).abs()[~equal]
        assert ulps.numel() == 0 or int(ulps.max()) <= 1, name
        total, same = total + equal.numel(), same + int(equal.sum())
    assert same / total >= 0.9999


def test_exact_mode_is_bit_identical(models, tmp_path, mergekit_out):
    run_merge(slerp_config(models), tmp_path / "exact", progress=False, exact=True)
    ours = load_tensors(tmp_path / "exact")
    for name, theirs in mergekit_out.items():
        assert torch.equal(ours[name].view(torch.int16), theirs.view(torch.int16)), name
