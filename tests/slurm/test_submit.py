"""Whole-pipeline submission on the local cluster, with stand-in stages that take seconds.

The stages follow the worker's protocol (hpcadapt.launch.probe_stage) so these tests
check the Slurm side: dependencies, skipping, snapshots, failures, dry runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcadapt.config import ClusterConfig
from hpcadapt.errors import HpcadaptError
from hpcadapt.launch.slurm_record import read_record
from hpcadapt.launch.slurm_status import SlurmUnavailable, pipeline_status
from hpcadapt.launch.slurm_submit import SubmissionRejected, require_sbatch, submit_plan, warn_if_not_shared
from hpcadapt.plan import PipelinePlan, StagePlan

pytestmark = pytest.mark.slurm
PROBE = "hpcadapt.launch.probe_stage"


def probe_plan(root: Path, names: list[str], nprocs: int = 1, fail: str = "", done: str = "",
               step_s: float = 0.2, steps: int = 3) -> PipelinePlan:
    """A linear chain of probe stages under `root`; `done` gets a complete manifest upfront."""
    stages = []
    for i, name in enumerate(names):
        stage_dir = root / "stages" / f"{name}-0000"
        spec_path = root / "stages" / f".staging-{name}-0000" / "spec.json"
        state_dir = root / "state" / name
        state_dir.mkdir(parents=True)
        spec_path.parent.mkdir(parents=True)
        spec = {"state_dir": str(state_dir), "total_steps": steps, "step_s": step_s, "stage_dir": str(stage_dir),
                "fail": name == fail}
        spec_path.write_text(json.dumps(spec))
        if name == done:
            stage_dir.mkdir(parents=True)
            (stage_dir / "manifest.json").write_text('{"complete": true}')
        stages.append(StagePlan(name=name, kind="cpt", stage_dir=stage_dir, spec_path=spec_path,
                                depends_on=names[i - 1:i], nprocs=nprocs, done=name == done))
    return PipelinePlan(name="probe", run_dir=root / "runs" / "probe-run", stages=stages, models={})


def cluster_config(partition: str, **overrides) -> ClusterConfig:
    settings = dict(kind="slurm", partition=partition, nodes=1, tasks_per_node=1, cpus_per_task=1, mem_gb=1,
                    timeout_min=5, max_num_timeout=3, snapshot_code=True)
    settings.update(overrides)
    return ClusterConfig(**settings)


def test_chain_is_submitted_at_once_skips_done_stages_and_runs_the_snapshot(wait_until, slurm_cluster, shared_dir):
    plan = probe_plan(shared_dir, ["prep", "cpt", "sft"], done="prep")
    cluster = cluster_config(slurm_cluster["partition"])
    t0 = time.perf_counter()
    record = submit_plan(plan, cluster, shared_dir / "logs", stage_module=PROBE)
    assert time.perf_counter() - t0 < 10
    by_stage = {s.stage: s for s in record.stages}
    assert by_stage["prep"].job_id is None and by_stage["prep"].state == "already-complete"
    cpt, sft = by_stage["cpt"], by_stage["sft"]
    assert cpt.depends_on_jobs == [] and sft.depends_on_jobs == [cpt.job_id]
    assert read_record(plan.run_dir).stages[2].job_id == sft.job_id

    # Submitting again while the jobs are queued submits nothing new.
    again = submit_plan(plan, cluster, shared_dir / "logs", stage_module=PROBE)
    assert [s.job_id for s in again.stages] == [None, cpt.job_id, sft.job_id]
    assert {s.state for s in again.stages[1:]} == {"already-queued"}

    wait_until(lambda: (plan.stages[2].stage_dir / "manifest.json").exists(), 90, "the last stage to finish")
    rows = {r.stage: r for r in pipeline_status(plan.run_dir)}
    assert {r.state for r in rows.values()} == {"COMPLETE"}
    times = subprocess.run(["sacct", "-n", "-X", "-P", "-j", f"{cpt.job_id},{sft.job_id}", "-o", "JobID,Start,End"],
                           capture_output=True, text=True, check=True).stdout.split()
    ends = {line.split("|")[0]: line.split("|")[1:] for line in times}
    assert ends[sft.job_id][0] >= ends[cpt.job_id][1], "sft started before cpt ended"
    # The job ran the code copied at submission, not the checkout.
    ran = json.loads((shared_dir / "state" / "sft" / "rank0.json").read_text())["code"]
    assert ran.startswith(record.code_snapshot), ran


def test_failed_setup_line_fails_the_stage_with_log_tail_and_cancels_dependants(wait_until, slurm_cluster, shared_dir):
    plan = probe_plan(shared_dir, ["cpt", "sft"])
    cluster = cluster_config(slurm_cluster["partition"], setup=["module-load-that-does-not-exist gcc/12"],
                             snapshot_code=False)
    record = submit_plan(plan, cluster, shared_dir / "logs", stage_module=PROBE)

    def settled() -> bool:
        rows = pipeline_status(plan.run_dir)
        return all(r.state not in ("PENDING", "RUNNING") for r in rows)

    wait_until(settled, 60, "both jobs to end")
    rows = {r.stage: r for r in pipeline_status(plan.run_dir)}
    assert rows["cpt"].state == "FAILED"
    assert "exit code 97" in rows["cpt"].reason
    assert "setup line failed" in rows["cpt"].log_tail and "module-load-that-does-not-exist" in rows["cpt"].log_tail
    assert rows["sft"].state == "CANCELLED", rows["sft"]
    assert "dependency" in rows["sft"].reason
    assert record.stages[1].job_id == rows["sft"].job_id


def test_dry_run_prints_sbatch_scripts_and_submits_nothing(shared_dir, capsys):
    plan = probe_plan(shared_dir, ["cpt", "sft"], nprocs=4)
    cluster = cluster_config("gpu", nodes=2, tasks_per_node=2, gpus_per_node=2, account="chem", qos="high",
                             setup=["module load cuda/12.4"], additional_parameters={"constraint": "a100"})
    record = submit_plan(plan, cluster, shared_dir / "logs", dry_run=True, stage_module=PROBE)
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 2
    for flag in ("--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=2", "--partition=gpu", "--account=chem",
                 "--qos=high", "--constraint=a100", "--signal=USR2@"):
        assert f"#SBATCH {flag}" in out, flag
    assert "#SBATCH --dependency='afterok:<jobid:cpt>'" in out and "#SBATCH --kill-on-invalid-dep=yes" in out
    assert "module load cuda/12.4 ||" in out
    assert [s.state for s in record.stages] == ["dry-run"] * 2  # job ids are the scripts' placeholders
    assert not plan.run_dir.exists()


def test_sbatch_rejection_carries_slurms_message(slurm_cluster, shared_dir):
    plan = probe_plan(shared_dir, ["cpt"])
    with pytest.raises(SubmissionRejected, match="(?i)invalid partition"):
        submit_plan(plan, cluster_config("no-such-partition", snapshot_code=False), shared_dir / "logs",
                    stage_module=PROBE)
    with pytest.raises(SubmissionRejected, match="(?i)node configuration is not available"):
        submit_plan(plan, cluster_config(slurm_cluster["partition"], mem_gb=4096, snapshot_code=False),
                    shared_dir / "logs", stage_module=PROBE)
    assert not plan.run_dir.exists()

    # A rejection in the middle of a chain cancels what this command already submitted.
    chain = probe_plan(shared_dir / "chain", ["cpt", "sft"])
    chain.stages[1].nprocs = 2  # only the second stage asks for more than a node has
    too_big = cluster_config(slurm_cluster["partition"], cpus_per_task=3, tasks_per_node=2, snapshot_code=False)
    with pytest.raises(SubmissionRejected, match="were cancelled"):
        submit_plan(chain, too_big, shared_dir / "logs", stage_module=PROBE)
    assert not chain.run_dir.exists()
    queued = subprocess.run(["squeue", "-h", "-n", "probe.cpt", "-t", "PD,R", "-o", "%i %T"], capture_output=True,
                            text=True).stdout.strip()
    assert queued == "", queued


def test_no_sbatch_suggests_local_or_the_local_cluster(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmUnavailable, match="cluster=local.*local-cluster.sh"):
        require_sbatch()
    with pytest.raises(HpcadaptError, match="no Slurm submission record"):
        pipeline_status(tmp_path)


def test_multi_node_stage_warns_about_local_folders(tmp_path):
    with pytest.warns(UserWarning, match="shared filesystem"):
        warn_if_not_shared(2, [tmp_path])


def test_submitting_imports_no_torch(slurm_cluster, shared_dir):
    code = f"""
import sys, json
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_submit import probe_plan, cluster_config
from hpcadapt.launch.slurm_submit import submit_plan
from pathlib import Path
plan = probe_plan(Path({str(shared_dir)!r}), ["cpt"], steps=1)
record = submit_plan(plan, cluster_config({slurm_cluster['partition']!r}), Path({str(shared_dir)!r}) / "logs",
                     stage_module="hpcadapt.launch.probe_stage")
print(json.dumps({{"torch": "torch" in sys.modules, "job": record.stages[0].job_id}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ},
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] is False
    assert result["job"]
