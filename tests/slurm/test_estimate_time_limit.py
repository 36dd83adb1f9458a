"""A training job asks Slurm for the time limit its estimate set (hpcadapt/estimate.py via `prepare`)."""

from __future__ import annotations

import subprocess

import pytest
from test_submit import PROBE, cluster_config, probe_plan

from hpcadapt.graph import build_graph
from hpcadapt.launch.slurm_submit import submit_stages

pytestmark = pytest.mark.slurm


def test_jobs_ask_for_their_estimated_time_limit_else_the_clusters(wait_until, slurm_cluster, shared_dir):
    plan = probe_plan(shared_dir, ["cpt", "sft"], steps=1)
    cluster = cluster_config(slurm_cluster["partition"], timeout_min=240, snapshot_code=False)
    limits = {plan.stages[0].stage_dir: 37}  # sft has none: cluster.timeout_min
    record = submit_stages(build_graph("probe", [plan]), cluster, shared_dir / "logs", stage_module=PROBE,
                           time_limits=limits)[0]
    jobs = [s.job_id for s in record.stages]

    def asked() -> dict[str, str]:  # accounting fills a job's row in a moment after sbatch returns
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(jobs), "-o", "JobID,Timelimit"],
                             capture_output=True, text=True, check=True).stdout.split()
        return {job: limit for job, limit in (line.split("|") for line in out) if limit}

    wait_until(lambda: len(asked()) == 2, 30, "accounting to list both jobs' time limits")
    assert asked() == {jobs[0]: "00:37:00", jobs[1]: "04:00:00"}
    wait_until(lambda: (plan.stages[1].stage_dir / "manifest.json").exists(), 90, "the probe chain to finish")
