"""Real jobs on the local cluster: placement, multi-node gloo, requeue, failure reasons."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hpcadapt.launch import probes
from hpcadapt.launch.slurm_job import StageJob
from hpcadapt.launch.slurm_status import query_jobs

pytestmark = pytest.mark.slurm


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def test_job_runs_on_a_node_and_sees_its_stand_in_gpus(make_executor):
    job = make_executor("where", slurm_gpus_per_node=2).submit(probes.where_am_i)
    info = job.result()
    assert info["node"] in {"n1", "n2"}
    # Slurm sets the job's GPUs; nothing remaps them per task.
    assert info["cuda_visible_devices"] == "0,1"


def test_two_nodes_two_tasks_gloo_allreduce(make_executor):
    executor = make_executor("gloo", nodes=2, tasks_per_node=2, mem_gb=2, timeout_min=3)
    results = executor.submit(probes.gloo_allreduce).results()
    assert sorted(r["rank"] for r in results) == [0, 1, 2, 3]
    assert {r["world_size"] for r in results} == {4}
    assert {r["sum"] for r in results} == {1.0 + 2.0 + 3.0 + 4.0}
    assert {r["node"] for r in results} == {"n1", "n2"}
    assert sorted(r["local_rank"] for r in results) == [0, 0, 1, 1]
    assert {r["master_addr"] for r in results} == {"n1"}


def test_stage_job_stops_at_a_step_boundary_on_every_rank_and_resumes(wait_until, make_executor, shared_dir):
    spec = shared_dir / "spec.json"
    state_dir = shared_dir / "state"
    state_dir.mkdir()
    spec.write_text(json.dumps({"state_dir": str(state_dir), "total_steps": 10, "step_s": 0.4}))
    executor = make_executor("stage", nodes=1, tasks_per_node=2)
    job = executor.submit(StageJob(str(spec), "probe", stage_module="hpcadapt.launch.probe_stage"))
    wait_until(lambda: read_json(state_dir / "rank1.json").get("step", 0) >= 2, 60, "both ranks to step")
    job._interrupt()
    job.results()
    for rank in (0, 1):
        state = read_json(state_dir / f"rank{rank}.json")
        assert state["step"] == 10, state
        assert state["stops"] == 1 and state["starts"] == 2, state
        assert state["world_size"] == 2


def test_status_names_cancelled_oom_failed_and_blocked_jobs(wait_until, make_executor):
    executor = make_executor("status", mem_gb=0.2)
    oom = executor.submit(probes.hold_memory, 600, 5.0)
    crash = executor.submit(probes.fail_with, 3)
    sleeper = make_executor("status").submit(probes.sleep_for, 120)
    blocked = make_executor("status", slurm_additional_parameters={"dependency": f"afterok:{crash.job_id}"}).submit(
        probes.sleep_for, 1
    )
    wait_until(lambda: sleeper.state == "RUNNING", 60, "the sleeper to start")
    sleeper.cancel()

    def settled() -> bool:
        records = query_jobs([oom.job_id, crash.job_id, sleeper.job_id, blocked.job_id])
        return records[blocked.job_id].pending_reason == "DependencyNeverSatisfied" and all(
            records[j.job_id].finished for j in (oom, crash, sleeper))

    wait_until(settled, 60, "accounting to record the ends")
    records = query_jobs([oom.job_id, crash.job_id, sleeper.job_id, blocked.job_id])
    assert records[oom.job_id].state == "OUT_OF_MEMORY"
    assert "out of memory" in records[oom.job_id].reason()
    assert records[crash.job_id].state == "FAILED"
    assert records[sleeper.job_id].state == "CANCELLED"
    assert records[sleeper.job_id].reason().startswith("cancelled")
    assert "never" in records[blocked.job_id].reason()
    blocked.cancel()


@pytest.mark.slow
def test_stage_job_hitting_a_real_time_limit_is_requeued_and_finishes(wait_until, make_executor, shared_dir):
    """A 2-minute limit with the warning 100 s before. slurmctld checks limits on a ~30 s
    tick that can slip, so the warning lands somewhere from 20 s into a run until its
    end; 75 s of work outlasts that window, so at least one requeue must happen."""
    spec = shared_dir / "spec.json"
    state_dir = shared_dir / "state"
    state_dir.mkdir()
    spec.write_text(json.dumps({"state_dir": str(state_dir), "total_steps": 150, "step_s": 0.5}))
    executor = make_executor("timelimit", timeout_min=2, slurm_signal_delay_s=100, slurm_max_num_timeout=6)
    job = executor.submit(StageJob(str(spec), "probe", stage_module="hpcadapt.launch.probe_stage"))
    job.result()
    state = read_json(state_dir / "rank0.json")
    assert state["step"] == 150
    assert state["stops"] >= 1 and state["starts"] == state["stops"] + 1, state

    def history() -> list[str]:
        return subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", job.job_id, "-o", "State"],
                              capture_output=True, text=True, check=True).stdout.split()

    wait_until(lambda: history()[-1:] == ["COMPLETED"], 60, "accounting to record the end")
    assert len(history()) >= 2, history()
