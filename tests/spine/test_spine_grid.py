"""Strategy grids: the paper's strategy names, one graph of shared stages, each trained once, ranked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from spine_helpers import FAST, compose_cfg, write_toy_domain

from hpcadapt.config import ConfigError
from hpcadapt.graph import build_graph
from hpcadapt.grid import parse_strategy, strategies_of
from hpcadapt.launch.local import run_local
from hpcadapt.plan import plan_pipeline

STAGES = ["cpt", "sft", "dpo", "orpo"]
# The tiny grid with few steps and a quick evaluation (FAST turns merge and evaluation off).
QUICK = [*[o for o in FAST if not o.startswith(("pipeline.merge", "pipeline.evaluate"))], "stages.dpo.max_steps=4",
         "eval.protocols=[loglik]", "eval.bootstrap_samples=200", "wandb.enabled=false"]


def test_strategy_names_are_the_papers():
    assert parse_strategy("Instruct-CPT-SFT-ORPO-SLERP", STAGES) == (
        parse_strategy({"start": "instruct", "chain": ["cpt", "sft", "orpo"], "merge": True}, STAGES))
    s = parse_strategy("Base-CPT-SFT", STAGES)
    assert (s.name, s.start, s.chain, s.merge) == ("Base-CPT-SFT", "base", ("cpt", "sft"), False)
    with pytest.raises(ConfigError, match=r"needs stage\(s\) \['kto'\].*/stage@stages.kto: kto"):
        parse_strategy("Instruct-CPT-KTO", STAGES)
    with pytest.raises(ConfigError, match="SLERP needs at least one stage"):
        parse_strategy("Instruct-SLERP", STAGES)
    with pytest.raises(ConfigError, match="expected Base\\|Instruct"):
        parse_strategy("CPT-SFT", STAGES)


def test_grid_plans_shared_prefixes_once(tmp_path):
    write_toy_domain(tmp_path)
    cfg = compose_cfg([f"output_root={tmp_path}", "+grid=tiny", *QUICK], experiment=None)
    strategies = strategies_of(cfg)
    graph = build_graph("tiny", [plan_pipeline(cfg, s) for s in strategies])
    assert len(strategies) == 7 and graph.chain_steps == 48 and len(graph.stages) == 21
    by_name = {}
    for stage in graph.ordered:
        by_name.setdefault(stage.plan.name, []).append(stage)
    assert len(by_name["cpt"]) == 2  # from Instruct and from Base
    assert len(by_name["tiny_init"]) == len(by_name["instruct_sft"]) == 1
    assert by_name["tiny_init"][0].used_by == [s.name for s in strategies]


@pytest.mark.slow
def test_grid_trains_each_unique_stage_once_and_ranks_the_strategies(tmp_path, capfd):
    write_toy_domain(tmp_path)
    quick_with_wandb = [o for o in QUICK if o != "wandb.enabled=false"]  # offline runs (tests/conftest.py)
    graph = run_local(compose_cfg([f"output_root={tmp_path}", "+grid=tiny", *quick_with_wandb], experiment=None))
    out = capfd.readouterr().out
    assert out.count(" done in ") == len(graph.stages) == 21  # each unique stage trained exactly once
    for stage in graph.ordered:
        assert json.loads((stage.folder / "manifest.json").read_text())["complete"]
    report_dir = next((tmp_path / "grids").glob("tiny-*"))
    report = json.loads((report_dir / "report.json").read_text())
    ranked = report["strategies"]
    assert [r["rank"] for r in ranked] == list(range(1, 8))
    assert {r["strategy"] for r in ranked} == {p.name for p in graph.pipelines}
    assert [r["overall"]["estimate"] for r in ranked] == sorted((r["overall"]["estimate"] for r in ranked),
                                                                 reverse=True)
    best = ranked[0]
    assert best["minus_best"]["estimate"] == 0 and not best["differs_from_best"]
    merged = [r for r in ranked if r["strategy"].endswith("SLERP")]
    assert merged and all(r["synergy"] for r in merged)
    assert all(r["compute"]["stage_seconds"] > 0 for r in ranked)
    for name in ("report.md", "accuracy_by_strategy.png", "accuracy_vs_stages.png"):
        assert (report_dir / name).is_file()
    assert "| 1 |" in (report_dir / "report.md").read_text()
    # W&B: one offline run per unique stage, in the grid's one group, and one for the comparison.
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == len(graph.stages) + 1
    # Every strategy's run folder links its stages and holds its table.
    for pipeline in graph.pipelines:
        assert (pipeline.run_dir / "table.md").is_file() and (pipeline.run_dir / "eval").is_symlink()


def recording_sbatch(folder: Path) -> tuple[dict, Path]:
    """A `sbatch` first on PATH that records its calls and fails: nothing may reach it."""
    calls = folder / "sbatch-calls.txt"
    fake = folder / "bin" / "sbatch"
    fake.parent.mkdir(parents=True)
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 1\n")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}, calls


def test_plan_and_dry_run_never_call_sbatch(tmp_path):
    write_toy_domain(tmp_path)
    env, calls = recording_sbatch(tmp_path)
    base = [sys.executable, "-m", "hpcadapt", f"output_root={tmp_path}", "+grid=tiny", *QUICK, "cluster=local_slurm",
            "cluster.partition=gpu"]
    for extra in (["dry_run=true"], ["status=true"], ["--cfg", "job"]):
        done = subprocess.run([*base, *extra], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    dry = subprocess.run([*base, "dry_run=true"], env=env, capture_output=True, text=True, timeout=300)
    assert "48 stage step(s) as 21 unique stage(s)" in dry.stdout
    assert dry.stdout.count("# ---- sbatch script for stage") >= 10  # the scripts it would submit
    assert not calls.exists()


@pytest.mark.slow
def test_two_runs_on_one_output_root_train_a_shared_stage_once(tmp_path):
    write_toy_domain(tmp_path)
    common = [sys.executable, "-m", "hpcadapt", f"output_root={tmp_path}", *FAST, "wandb.enabled=false",
              "stages.cpt.max_steps=40"]
    runs = [subprocess.Popen([*common, f"pipeline.chain=[cpt,{last}]"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for last in ("sft", "orpo")]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    both = "".join(outputs)
    for stage in ("tiny_init", "base_pretrain", "instruct_sft", "cpt"):
        trained = [line for line in both.splitlines() if line.startswith("[stage") and f"] {stage} (" in line
                   and " done in " in line]
        assert len(trained) == 1, (stage, trained)
    assert "waiting for stage" in both or "completed by another run" in both
