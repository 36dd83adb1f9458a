"""Parity with mergekit 0.1.5 (run under OMP_NUM_THREADS=1).

SLERP is bit-identical to it, tensor by tensor, with the same branch; endpoints are byte
copies of one parent. Two pairs: the shared tiny 4-layer pair, and a 3-layer pair whose MLP
matrices exceed one 1,048,576-element reduction chunk, with an all-zero tensor (in both
parents) and a tensor that is zero in the base only.

linear, task_arithmetic, ties, dare_ties and dare_linear are bit-identical to it for pairs
and triples, dtype bfloat16 and float32, with out_dtype, mergekit's defaults and per-filter
and gradient parameters (DARE with the same --random-seed; TIES with --mergekit-sort, and
without it differing only where equal magnitudes meet the density cut)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hpcadapt_merge import run_merge
from hpcadapt_merge.compare import agreement as compare_folders
from hpcadapt_merge.compare import compare
from hpcadapt_merge.schedule import PAPER_SLERP_T
from merge_helpers import derive_model, load_tensors, random_mistral, slerp_config

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("mergekit") is None, reason="mergekit is not installed (pip install mergekit==0.1.5)")]

BIG = "model.layers.1.mlp.up_proj.weight"  # 4160 x 256 = 1,064,960 elements: two reduction chunks
ZERO_BOTH, ZERO_BASE = "model.layers.1.input_layernorm.weight", "model.layers.1.self_attn.o_proj.weight"


def run_mergekit(config: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yml").write_text(yaml.safe_dump(config))  # absolute paths: mergekit reads others as hub ids
    command = shutil.which("mergekit-yaml", path=str(Path(sys.executable).parent)) or shutil.which("mergekit-yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([command, str(folder / "recipe.yml"), str(folder / "out")], capture_output=True, text=True,
                          timeout=300, env=env)
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
            "parameters": {"t": PAPER_SLERP_T}, "dtype": "bfloat16"}


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


# ---- linear, task arithmetic, TIES, DARE ----------------------------------------------------


def mergekit_in_process(config: dict, out: Path, seed: int | None = None) -> Path:
    """mergekit's own run_merge in this process (its imports once, not once per run)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_run
    from mergekit.options import MergeOptions

    options = MergeOptions(random_seed=seed, quiet=True)
    options.apply_global_options()  # seeds torch's generator as mergekit-yaml --random-seed does
    mergekit_run(MergeConfiguration.model_validate(config), str(out), options)
    return out


def agreement(ours: Path, theirs: Path) -> tuple[float, int, dict]:
    """(identical fraction, largest difference in ulps of the dtype, {tensor: differing mask})."""
    result = compare_folders(ours, theirs)
    return result["identical_fraction"], result["max_ulp"], result["differing"]


@pytest.fixture(scope="module")
def float32_parents(models, tmp_path_factory):
    """The tiny base and fine-tunes stored as float32 (recipes then cast them to their dtype)."""
    root = tmp_path_factory.mktemp("float32-parents")
    return {k: derive_model(v, root / k, 0.0, 0, dtype="float32") for k, v in models.items()}


def gta_recipe(models, method, dtype="bfloat16", three=True, out_dtype=None, **params) -> dict:
    weights = [{"filter": "self_attn", "value": 0.7}, {"filter": "mlp", "value": [0.2, 0.9]}, {"value": 0.5}]
    entries = [{"model": str(models["tuned"]), "parameters": {"weight": weights, "density": [0.3, 0.8]}}]
    if three:
        entries.append({"model": str(models["other"]), "parameters": {"weight": 0.4, "density": 0.6}})
    if method == "linear":
        entries.insert(0, {"model": str(models["base"]), "parameters": {"weight": 0.3}})
    if method in ("linear", "task_arithmetic"):
        for entry in entries:
            entry["parameters"].pop("density", None)
    recipe = {"merge_method": method, "models": entries, "dtype": dtype, "parameters": params}
    if method != "linear":
        recipe["base_model"] = str(models["base"])
    if out_dtype:
        recipe["out_dtype"] = out_dtype
    return recipe


CASES = [  # method, dtype, three parents, out_dtype, parameters beyond mergekit's defaults
    ("linear", "bfloat16", True, None, {}),
    ("linear", "float32", False, "bfloat16", {"normalize": False}),
    ("task_arithmetic", "bfloat16", True, None, {"lambda": 0.8}),
    ("task_arithmetic", "float32", False, "bfloat16", {"normalize": True}),
    ("ties", "bfloat16", True, None, {"int8_mask": True}),
    ("ties", "float32", True, "bfloat16", {"lambda": [0.5, 1.0], "rescale": True}),
    ("ties", "bfloat16", False, "float32", {"normalize": False}),
    ("dare_ties", "bfloat16", True, None, {"int8_mask": True}),
    ("dare_ties", "float32", False, "bfloat16", {"rescale": False, "normalize": True}),
    ("dare_linear", "bfloat16", False, "float32", {}),
    ("dare_linear", "float32", True, None, {"lambda": 1.2}),
]


@pytest.mark.parametrize("method, dtype, three, out_dtype, params", CASES,
                         ids=[f"{c[0]}-{c[1]}-{'triple' if c[2] else 'pair'}-{c[3] or 'same'}" for c in CASES])
def test_method_is_bit_identical_to_mergekit(models, tmp_path, method, dtype, three, out_dtype, params):
    recipe = gta_recipe(models, method, dtype, three, out_dtype, **params)
    seed = 17 if method.startswith("dare") else None
    theirs = mergekit_in_process(recipe, tmp_path / "mergekit", seed)
    run_merge(recipe, tmp_path / "ours", workers=2, progress=False, fsync=False, random_seed=seed,
              mergekit_sort=method == "ties")
    identical, worst, _ = agreement(tmp_path / "ours", theirs)
    assert (identical, worst) == (1.0, 0)


def test_float32_parents_cast_to_bfloat16_match_mergekit(float32_parents, tmp_path):
    recipe = gta_recipe(float32_parents, "dare_ties", "bfloat16", True)
    theirs = mergekit_in_process(recipe, tmp_path / "mergekit", 5)
    run_merge(recipe, tmp_path / "ours", progress=False, fsync=False, random_seed=5)
    assert agreement(tmp_path / "ours", theirs)[:2] == (1.0, 0)


def test_ties_default_differs_from_mergekit_only_at_ties_of_the_cut(models, tmp_path):
    """Without --mergekit-sort, among equal magnitudes at the density cut the earliest are kept;
    mergekit keeps whichever its unstable sort puts first. Every differing element is such a tie."""
    recipe = gta_recipe(models, "ties", "bfloat16", True)
    theirs = mergekit_in_process(recipe, tmp_path / "mergekit")
    run_merge(recipe, tmp_path / "ours", progress=False, fsync=False)
    identical, _, differing = agreement(tmp_path / "ours", theirs)
    assert 0.9 < identical < 1.0
    report = json.loads((tmp_path / "ours" / "merge_report.json").read_text())["tensors"]
    parents = [load_tensors(models[k]) for k in ("base", "tuned", "other")]
    for name, mask in differing.items():
        base = parents[0][name]
        at_cut = torch.zeros_like(mask)
        for index, parent in enumerate(parents[1:]):
            magnitude = (parent[name] - base).abs().float().reshape(-1)
            k = max(1, int(report[name]["densities"][index] * magnitude.numel()))
            cut = torch.sort(magnitude, descending=True).values[k - 1]
            at_cut |= (magnitude == cut).reshape(mask.shape)
        assert bool(at_cut[mask].all()), name
