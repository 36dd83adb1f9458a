"""A 4-point sweep on the local cluster: one shared job, then job arrays, submitted at once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hpcadapt.config import ClusterConfig
from hpcadapt.launch.slurm_status import pipeline_status
from hpcadapt.launch.slurm_sweep import dependency_clauses, SubmittedUnit, submit_sweep
from hpcadapt.plan import PipelinePlan, StagePlan

pytestmark = pytest.mark.slurm
PROBE = "hpcadapt.launch.probe_stage"


def probe_stage(root: Path, name: str, folder: str, deps: list[str]) -> StagePlan:
    stage_dir = root / "stages" / folder
    spec_path = root / "stages" / f".staging-{folder}" / "spec.json"
    if not spec_path.exists():
        (root / "state" / folder).mkdir(parents=True)
        spec_path.parent.mkdir(parents=True)
        spec_path.write_text(json.dumps({"state_dir": str(root / "state" / folder), "total_steps": 2,
                                         "step_s": 0.2, "stage_dir": str(stage_dir)}))
    return StagePlan(name=name, kind="cpt", stage_dir=stage_dir, spec_path=spec_path, depends_on=deps, nprocs=1,
                     done=False)


def sweep_plans(root: Path, points: int) -> list[PipelinePlan]:
    """`prep` is the same in every point; `train` and `eval` differ (like a learning-rate sweep)."""
    return [PipelinePlan(name="sweep", run_dir=root / "runs" / f"point{p}", models={}, stages=[
        probe_stage(root, "prep", "prep-shared", []),
        probe_stage(root, "train", f"train-lr{p}", ["prep"]),
        probe_stage(root, "eval", f"eval-lr{p}", ["train"]),
    ]) for p in range(points)]


def test_four_point_sweep_runs_as_one_array_per_differing_stage(wait_until, slurm_cluster, shared_dir):
    plans = sweep_plans(shared_dir, 4)
    cluster = ClusterConfig(kind="slurm", partition=slurm_cluster["partition"], cpus_per_task=1, mem_gb=1,
                            timeout_min=5, array_parallelism=2, snapshot_code=False)
    units = submit_sweep(plans, cluster, shared_dir / "logs", stage_module=PROBE)
    assert not units["prep"].is_array
    assert units["train"].is_array and len(units["train"].logs) == 4
    assert units["eval"].is_array and units["eval"].task_of_point == {0: 0, 1: 1, 2: 2, 3: 3}

    details = subprocess.run(["scontrol", "show", "job", units["eval"].job_id], capture_output=True, text=True).stdout
    assert f"aftercorr:{units['train'].job_id}" in details
    assert "%2" in subprocess.run(["squeue", "-h", "-r", "-j", units["train"].job_id, "-o", "%i"],
                                  capture_output=True, text=True).stdout or "ArrayTaskThrottle=2" in \
        subprocess.run(["scontrol", "show", "job", units["train"].job_id], capture_output=True, text=True).stdout

    wait_until(lambda: all((p.stages[2].stage_dir / "manifest.json").exists() for p in plans), 120,
               "every point's eval to finish")
    for plan in plans:
        rows = pipeline_status(plan.run_dir)
        assert [r.state for r in rows] == ["COMPLETE"] * 3
        assert rows[1].job_id.startswith(units["train"].job_id + "_")
    # The shared stage ran once.
    assert json.loads((shared_dir / "state" / "prep-shared" / "rank0.json").read_text())["starts"] == 1


def test_dependencies_use_aftercorr_only_when_tasks_line_up():
    train = SubmittedUnit("10", True, {0: 0, 1: 1}, {0: ("", ""), 1: ("", "")})
    prep = SubmittedUnit("9", False, {0: 0, 1: 0}, {0: ("", "")})
    assert dependency_clauses({"train": train, "prep": prep}, {"train", "prep"}, {0: 0, 1: 1}, 2) == [
        "afterok:9", "aftercorr:10"]
    # A single job after an array waits for all of it.
    assert dependency_clauses({"train": train}, {"train"}, {0: 0, 1: 0}, 1) == ["afterok:10"]
    # Stages already complete impose nothing.
    assert dependency_clauses({}, {"train"}, {0: 0}, 1) == []


def test_hydra_sweep_points_become_held_arrays(slurm_cluster, tmp_path):
    """The Hydra callback turns a 2-point multirun of the tiny demo into shared jobs plus
    arrays. Jobs are submitted held and cancelled: only the structure is checked here."""
    from types import SimpleNamespace

    from hydra import compose, initialize_config_dir
    from hydra.core.utils import JobStatus

    from hpcadapt.__main__ import conf_dir
    from hpcadapt.config import register_configs
    from hpcadapt.launch.slurm_sweep import SweepToArrays

    register_configs()
    callback = SweepToArrays()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        for beta in (0.1, 0.2):
            cfg = compose("config", overrides=[
                "+experiment=tiny_demo", "cluster.kind=slurm", f"cluster.partition={slurm_cluster['partition']}",
                "cluster.mem_gb=1", "cluster.cpus_per_task=1", "+cluster.additional_parameters.hold=true",
                f"output_root={tmp_path}", f"stages.orpo.beta={beta}"])
            callback.on_job_end(cfg, SimpleNamespace(status=JobStatus.COMPLETED))
        units = callback.on_multirun_end(cfg)
    try:
        assert not units["cpt"].is_array and not units["sft"].is_array
        assert units["orpo"].is_array and len(units["orpo"].logs) == 2
        assert units["eval"].is_array
        details = subprocess.run(["scontrol", "show", "job", units["merge"].job_id], capture_output=True,
                                 text=True).stdout
        assert f"aftercorr:{units['orpo'].job_id}" in details
    finally:
        subprocess.run(["scancel", *[u.job_id for u in units.values()]], check=False)
