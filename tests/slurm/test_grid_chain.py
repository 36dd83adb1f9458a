"""A strategy grid on the local cluster: each unique stage one job, after exactly its inputs' jobs;
a second submission that shares a prefix waits on the first one's jobs instead of duplicating them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from slurm_helpers import describe_jobs, job_logs

from hpcadapt.launch.slurm_record import read_record

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FEW_STEPS = ["stages.base_pretrain.max_steps=6", "stages.instruct_sft.max_steps=6", "stages.cpt.max_steps=6",
             "stages.sft.max_steps=6", "stages.orpo.max_steps=4", "eval.protocols=[loglik]",
             "eval.bootstrap_samples=200", "stages.tiny_init.extra.vocab_size=400", "wandb.enabled=false"]


def hpcadapt(root: Path, partition: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcadapt", *overrides, "cluster=local_slurm",
                           f"cluster.partition={partition}", f"output_root={root}", *FEW_STEPS],
                          env={**os.environ}, capture_output=True, text=True, timeout=300)


def sacct_times(job_ids: list[str]) -> dict[str, tuple[str, datetime, datetime]]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,State,Start,End"],
                         capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.split():
        job, state, start, end = line.split("|")
        rows[job] = (state, datetime.fromisoformat(start), datetime.fromisoformat(end))
    return rows


def test_grid_runs_each_unique_stage_once_in_dependency_order(wait_until, slurm_cluster, shared_dir):
    root = shared_dir / "grid"
    strategies = "grid.strategies=[Instruct-CPT-SLERP,Instruct-CPT-SFT-SLERP,Instruct-CPT-SFT-ORPO-SLERP,Base-CPT-SFT]"
    submit = hpcadapt(root, slurm_cluster["partition"], "+grid=tiny", strategies)
    assert submit.returncode == 0, submit.stderr[-3000:]
    records = [read_record(p.parent) for p in root.glob("runs/*/slurm_jobs.json")]
    assert len(records) == 4
    job_of: dict[str, str] = {}  # stage folder -> job
    inputs: dict[str, list[str]] = {}  # stage folder -> the folders it reads
    for record in records:
        folder = {s.stage: s.stage_dir for s in record.stages}
        for stage in record.stages:
            assert job_of.setdefault(stage.stage_dir, stage.job_id) == stage.job_id  # one job per folder
        for stage in json.loads((Path(record.run_dir) / "plan.json").read_text())["stages"]:
            inputs[stage["dir"]] = [folder[d] for d in stage["depends_on"]]
    assert len(job_of) == 15  # 4 strategies, 27 chain steps, 15 unique stages
    jobs = sorted(set(job_of.values()))

    def explain() -> str:
        return describe_jobs(jobs, [log for r in records for s in r.stages for log in job_logs(s.log_out, s.job_id)])

    evals = [d for d in job_of if Path(d).name.startswith("eval-")]
    wait_until(lambda: all((Path(d) / "manifest.json").is_file() for d in evals), 1500, "every evaluation", explain)
    wait_until(lambda: any(root.glob("grids/tiny-*/report.md")), 180, "the report job", explain)
    times = sacct_times(jobs)
    assert {state for state, _, _ in times.values()} == {"COMPLETED"}, times
    for folder, job in job_of.items():
        for source in inputs[folder]:
            assert times[job][1] >= times[job_of[source]][2], f"{Path(folder).name} started before its input ended"
    report = json.loads(next(root.glob("grids/tiny-*/report.json")).read_text())
    assert len(report["strategies"]) == 4


def test_a_second_submission_waits_on_the_first_ones_shared_stages(slurm_cluster, shared_dir):
    root = shared_dir / "two"
    held = ["+cluster.additional_parameters.hold=true", "+cluster.merge.additional_parameters.hold=true",
            "+cluster.eval.additional_parameters.hold=true"]
    first = hpcadapt(root, slurm_cluster["partition"], "+experiment=tiny_demo", "pipeline.chain=[cpt,sft]", *held)
    second = hpcadapt(root, slurm_cluster["partition"], "+experiment=tiny_demo", "pipeline.chain=[cpt,orpo]", *held)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr[-2000:], second.stderr[-2000:])
    records = sorted((read_record(p.parent) for p in root.glob("runs/*/slurm_jobs.json")), key=lambda r: r.submitted_at)
    a, b = ({s.stage: s for s in r.stages} for r in records)
    try:
        for shared in ("tiny_init", "base_pretrain", "instruct_sft", "cpt"):
            assert b[shared].job_id == a[shared].job_id and b[shared].state == "already-queued", shared
        assert b["orpo"].state == "submitted" and f"afterok:{a['cpt'].job_id}" in subprocess.run(
            ["scontrol", "show", "job", b["orpo"].job_id], capture_output=True, text=True).stdout
    finally:
        jobs = {s.job_id.split("_")[0] for r in records for s in r.stages if s.job_id}
        subprocess.run(["scancel", *jobs], check=False)
        subprocess.run(["scancel", "-n", "tiny_demo.report"], check=False)
