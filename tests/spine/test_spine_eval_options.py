"""What the evaluation offers, reachable from the config: a schedule sweep and lm-eval tasks."""

from __future__ import annotations

import json

import pytest
from spine_helpers import FAST, compose_cfg, write_toy_domain

from hpcadapt.launch.local import run_local

pytestmark = pytest.mark.slow


def test_schedule_sweep_and_lm_eval_tasks_from_the_config(tmp_path):
    from hpcadapt.eval.lm_eval_tasks import export_lm_eval_task

    data = write_toy_domain(tmp_path)
    task = export_lm_eval_task(data / "benchmark_basic.jsonl", tmp_path / "tasks")
    evaluation = [o for o in FAST if not o.startswith("pipeline.")]
    plan = run_local(compose_cfg([
        f"output_root={tmp_path}", *evaluation, "wandb.enabled=false", "pipeline.chain=[cpt]",
        "eval.protocols=[loglik]", "eval.bootstrap_samples=200", "eval.schedules=[paper,0.25,ramp_up]",
        f"eval.lm_eval_tasks=[{task}]", f"eval.lm_eval_include={tmp_path / 'tasks'}", "eval.lm_eval_limit=4"]))
    stage = plan.stage("eval").stage_dir
    report = json.loads((stage / "synergy" / "report.json").read_text())
    assert [row["name"] for row in report["sweep"]] and {r["name"] for r in report["sweep"]} == {
        "paper", "constant_0.25", "ramp_up"}
    assert "## Schedule sweep" in (stage / "synergy" / "report.md").read_text()
    scores = json.loads((stage / "lm_eval.json").read_text())
    assert set(scores) == {"instruct", "cpt", "merged"} and all(task in s for s in scores.values())
