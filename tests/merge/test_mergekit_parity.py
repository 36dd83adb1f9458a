"""Parity with mergekit 0.1.5 (run under OMP_NUM_THREADS=1): the default SLERP is bit-identical
to it, tensor by tensor, with the same branch; endpoints are byte copies of one parent.

Two pairs: the shared tiny 4-layer pair, and a 3-layer pair whose MLP matrices exceed one
1,048,576-element reduction chunk, with an all-zero tensor (in both parents) and a tensor
that is zero in the base only."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PAPER_T, derive_model, load_tensors, random_mistral, slerp_config

from hpcadapt_merge import run_merge
from hpcadapt_merge.compare import compare

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("mergekit") is None, reason="mergekit is not installed (pip install mergekit==0.1.5)")]

BIG = "model.layers.1.mlp.up_proj.weight"  # 4160 x 256 = 1,064,960 elements: two reduction chunks
ZERO_BOTH, ZERO_BASE = "model.layers.1.input_layernorm.weight", "model.layers.1.self_attn.o_proj.weight"


def run_mergekit(config: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yml").write_text(yaml.safe_dump(config))  # absolute paths: mergekit reads others as hub ids
    command = shutil.which("mergekit-yaml", path=str(Path(sys.executable).parent)) or shutil.which("mergekit-yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([command, str(folder / "recipe.yml"), str(folder / "out")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return folder / "out"


def zero_tensor(model: Path, name: str) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(model / "model.safetensors")
    state[name] = torch.zeros_like(state[name])
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity-models")
    init = random_mistral(root / "init", hidden=256, intermediate=4160, layers=3)
    base, tuned = derive_model(init, root / "base", 0.0, 0), derive_model(init, root / "tuned", 0.03, 1)
    for model in (base, tuned):
        zero_tensor(model, ZERO_BOTH)
    zero_tensor(base, ZERO_BASE)
    return {"base": base, "tuned": tuned}


def big_config(models) -> dict:
    return {"merge_method": "slerp", "base_model": str(models["base"]),
            "slices": [{"sources": [{"model": str(models["base"]), "layer_range": [0, 3]},
                                    {"model": str(models["tuned"]), "layer_range": [0, 3]}]}],
            "parameters": {"t": PAPER_T}, "dtype": "bfloat16"}


def assert_bit_identical(ours: Path, theirs: Path, models) -> dict:
    """Every tensor equal to mergekit's bit for bit, except that a byte copy keeps a -0 where
    mergekit's (1 - 0)·x + 0·y gives +0; branches agree as read off mergekit's output."""
    mine, their = load_tensors(ours), load_tensors(theirs)
    assert set(mine) == set(their)
    for name, theirs_tensor in their.items():
        same_bits = mine[name].view(torch.int16) == theirs_tensor.view(torch.int16)
        both_zero = (mine[name] == 0) & (theirs_tensor == 0)
        assert bool((same_bits | both_zero).all()), name
    result = compare(ours, theirs, models["base"], models["tuned"])
    assert result["identical_fraction"] == 1.0 and result["max_ulp"] == 0 and result["branch_mismatches"] == []
    return result


def test_default_mode_is_bit_identical_to_mergekit(models, tmp_path):
    theirs = run_mergekit(slerp_config(models), tmp_path / "mergekit")
    run_merge(slerp_config(models), tmp_path / "ours", workers=2, progress=False)
    result = assert_bit_identical(tmp_path / "ours", theirs, models)
    assert set(result["branches"]) == {"lerp", "slerp"}


def test_large_and_zero_tensors_and_endpoints_match_mergekit(big_pair, tmp_path):
    theirs = run_mergekit(big_config(big_pair), tmp_path / "mergekit")
    summary = run_merge(big_config(big_pair), tmp_path / "ours", workers=2, progress=False)
    assert_bit_identical(tmp_path / "ours", theirs, big_pair)
    report = __import__("json").loads((tmp_path / "ours" / "merge_report.json").read_text())["tensors"]
    assert load_tensors(big_pair["base"])[BIG].numel() > 1 << 20 and 0 < report[BIG]["t"] < 1
    assert report[ZERO_BOTH]["cosine"] == 0.0 and report[ZERO_BASE]["cosine"] == 0.0
    assert set(summary.branch_counts) == {"lerp", "slerp"}
    base, tuned, ours = (load_tensors(p) for p in (big_pair["base"], big_pair["tuned"], tmp_path / "ours"))
    endpoints = [name for name, r in report.items() if r["t"] in (0.0, 1.0)]
    assert len(endpoints) >= 14
    for name in endpoints:  # byte copies of one parent
        parent = base if report[name]["t"] == 0.0 else tuned
        assert torch.equal(ours[name].view(torch.int16), parent[name].view(torch.int16)), name
