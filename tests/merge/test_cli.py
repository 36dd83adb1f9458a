"""The console command, the dry run and the schedule plot, and the standalone-import rule."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hpcadapt_merge.cli import main, parse_size
from hpcadapt_merge.plot import plot_schedule, schedule_curves
from merge_helpers import CLI, slerp_config


def relative_config(models, tmp_path):
    """A YAML recipe beside the models, naming them by relative path (as users write them)."""
    config = slerp_config({k: v.name for k, v in models.items()})
    path = models["base"].parent / f"recipe-{tmp_path.name}.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_plan_lists_every_tensor_with_method_t_sources_and_shard(models, tmp_path, capsys):
    png = tmp_path / "schedule.png"
    assert main([str(relative_config(models, tmp_path)), "--plan", "--plot-schedule", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "slerp" in lines[0] and "4 layers" in lines[0]
    row = next(line for line in lines if line.startswith("model.layers.1.self_attn.q_proj.weight"))
    assert row.split("\t")[2] == "t=0.433333"  # [0, .5, .3, .7, 1] at depth 1/3
    row = next(line for line in lines if line.startswith("model.layers.1.input_layernorm.weight"))
    name, method, t, sources, shard = row.split("\t")
    assert method == "slerp" and t == "t=0.5" and "base/model.safetensors + tuned/model.safetensors" == sources
    assert shard == "-> model-00001-of-00001.safetensors"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not (tmp_path / "out").exists()


def test_schedule_curves_per_filter_group():
    curves = schedule_curves([{"filter": "self_attn", "value": [0, 1]}, {"value": 0.5}], 5)
    assert curves == {"self_attn": [0.0, 0.25, 0.5, 0.75, 1.0], "default": [0.5] * 5}


def test_console_command_merges_and_reports_errors(models, tmp_path):
    recipe = relative_config(models, tmp_path)
    command = Path(sys.executable).parent / "hpcadapt-merge"
    done = subprocess.run(["hpcadapt-merge", str(recipe), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120, executable=str(command))
    assert done.returncode == 0, done.stderr
    assert "GB/s" in done.stderr and "peak RSS" in done.stderr and "merging" in done.stderr
    assert json.loads((tmp_path / "out" / "merge_report.json").read_text())["parents"] == ["base", "tuned"]
    again = subprocess.run([*CLI, str(recipe), str(tmp_path / "other"), "--out-shard-size", "1KB"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    bad = subprocess.run([*CLI, str(tmp_path / "missing.yml"), str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "missing.yml: merge config file not found" in bad.stderr


def test_parse_size():
    assert parse_size("5GB") == 5_000_000_000 and parse_size("100KB") == 100_000 and parse_size("1e6") == 1_000_000


def test_merging_imports_no_training_stack(models, tmp_path):
    script = f"""
import sys
import hpcadapt_merge
from hpcadapt_merge.plan import build_plan
assert "torch" not in sys.modules  # importing the package is cheap
summary = hpcadapt_merge.run_merge({slerp_config(models)!r}, {str(tmp_path / 'out')!r}, workers=2, progress=False)
assert summary.tensors > 0
heavy = [m for m in ("transformers", "trl", "deepspeed", "hydra", "accelerate") if m in sys.modules]  # torch is allowed
print("HEAVY", heavy)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


def test_the_command_merges_the_same_bytes_as_the_api(models, tmp_path):
    """The command imports torch without its tracing modules; every method computes the same
    weights (the card's recipe differs only in key order: the YAML file sorted them)."""
    from hpcadapt_merge import run_merge
    from merge_helpers import folder_bytes
    from test_engine import multi_config

    for method, config in (("slerp", slerp_config(models)), ("ties", multi_config(models, "ties", rescale=True)),
                           ("dare_linear", multi_config(models, "dare_linear"))):
        recipe = tmp_path / f"{method}.yml"
        recipe.write_text(yaml.safe_dump(config))
        done = subprocess.run([*CLI, str(recipe), str(tmp_path / f"{method}-cli"), "--no-progress"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        run_merge(config, tmp_path / f"{method}-api", progress=False)
        cli, api = folder_bytes(tmp_path / f"{method}-cli"), folder_bytes(tmp_path / f"{method}-api")
        weights = [name for name in api if name.endswith(".safetensors")]
        assert weights and all(cli[name] == api[name] for name in weights), method


def test_an_interrupted_schedule_plot_leaves_the_previous_picture(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    png = tmp_path / "schedule.png"
    png.write_bytes(b"the previous picture")

    def torn(self, fname, **options):
        Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", torn)
    with pytest.raises(KeyboardInterrupt):
        plot_schedule(0.5, 4, png)
    assert png.read_bytes() == b"the previous picture" and list(tmp_path.iterdir()) == [png]
