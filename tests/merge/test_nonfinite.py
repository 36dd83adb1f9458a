"""NaN and Inf in the inputs or the output are reported, tensor by tensor with counts, in the
summary and in merge_report.json (strict JSON); --fail-on-nonfinite makes them an error."""

import json
import shutil
import subprocess

import pytest
import yaml
from hpcadapt_merge import run_merge
from merge_helpers import CLI, load_tensors, slerp_config
from safetensors.torch import load_file, save_file

NAN_TENSOR = "model.layers.1.mlp.up_proj.weight"  # t = 0.5: merged
INF_TENSOR = "model.layers.2.self_attn.q_proj.weight"
COPIED = "model.layers.0.self_attn.q_proj.weight"  # t = 0 in the paper schedule: the base's bytes


@pytest.fixture(scope="module")
def poisoned(models, tmp_path_factory):
    """The tuned model with 3 NaN, 2 +Inf, and 1 NaN in a tensor the schedule copies from the base."""
    folder = shutil.copytree(models["tuned"], tmp_path_factory.mktemp("poisoned") / "tuned")
    state = load_file(folder / "model.safetensors")
    state[NAN_TENSOR].view(-1)[[0, 7, 99]] = float("nan")
    state[INF_TENSOR].view(-1)[[5, 6]] = float("inf")
    state[COPIED].view(-1)[3] = float("nan")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return {**models, "tuned": folder}


def strict(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_nonfinite_inputs_and_outputs_are_listed_with_counts(poisoned, tmp_path):
    summary = run_merge(slerp_config(poisoned), tmp_path / "out", workers=2, progress=False, fsync=False)
    report = strict(tmp_path / "out" / "merge_report.json")
    found = report["nonfinite"]
    assert set(found) == {NAN_TENSOR, INF_TENSOR, COPIED}
    merged = load_tensors(tmp_path / "out")
    assert found[NAN_TENSOR]["inputs"] == {"tuned": 3}
    assert found[NAN_TENSOR]["output"] == int((~merged[NAN_TENSOR].isfinite()).sum()) == merged[NAN_TENSOR].numel()
    assert found[INF_TENSOR]["inputs"] == {"tuned": 2} and found[INF_TENSOR]["output"] > 0
    assert found[COPIED] == {"inputs": {"tuned": 1}, "output": 0}  # t = 0: the base's bytes, the NaN is not used
    assert report["tensors"][NAN_TENSOR]["cosine"] is None
    assert summary.nonfinite == found
    assert "NaN/Inf found in 3 tensor(s)" in summary.describe()


def test_other_methods_count_too(poisoned, tmp_path):
    config = {"merge_method": "ties", "base_model": str(poisoned["base"]), "dtype": "bfloat16",
              "models": [{"model": str(poisoned["tuned"]), "parameters": {"weight": 1.0, "density": 0.5}}]}
    run_merge(config, tmp_path / "out", progress=False, fsync=False)
    found = strict(tmp_path / "out" / "merge_report.json")["nonfinite"]
    assert found[NAN_TENSOR]["inputs"] == {"tuned": 3} and found[COPIED]["inputs"] == {"tuned": 1}
    merged = load_tensors(tmp_path / "out")
    for name, entry in found.items():
        assert entry["output"] == int((~merged[name].isfinite()).sum())


def test_fail_on_nonfinite_publishes_nothing(poisoned, models, tmp_path):
    recipe = tmp_path / "merge.yml"
    recipe.write_text(yaml.safe_dump(slerp_config(poisoned)))
    done = subprocess.run([*CLI, str(recipe), str(tmp_path / "out"), "--fail-on-nonfinite", "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("hpcadapt-merge: error: NaN/Inf found in 3 tensor(s):")
    assert "Traceback" not in done.stderr
    assert NAN_TENSOR in done.stderr and not (tmp_path / "out").exists()
    clean_recipe = tmp_path / "clean.yml"
    clean_recipe.write_text(yaml.safe_dump(slerp_config(models)))
    clean = subprocess.run([*CLI, str(clean_recipe), str(tmp_path / "clean"), "--fail-on-nonfinite"],
                           capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert strict(tmp_path / "clean" / "merge_report.json")["nonfinite"] == {}
