"""Sweeps and graphs on the local cluster: one job per unique stage, arrays where stages line up."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hpcadapt.config import ClusterConfig
from hpcadapt.graph import build_graph
from hpcadapt.launch.slurm_status import pipeline_status
from hpcadapt.launch.slurm_submit import submit_stages
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
    """`prep` is the same in every point; `train` and `score` differ (like a learning-rate sweep)."""
    return [PipelinePlan(name=f"point{p}", run_dir=root / "runs" / f"point{p}", models={}, stages=[
        probe_stage(root, "prep", "prep-shared", []),
        probe_stage(root, "train", f"train-lr{p}", ["prep"]),
        probe_stage(root, "score", f"score-lr{p}", ["train"]),
    ]) for p in range(points)]


def job_details(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout


def test_four_point_sweep_shares_its_prefix_and_arrays_what_lines_up(wait_until, slurm_cluster, shared_dir):
    plans = sweep_plans(shared_dir, 4)
    cluster = ClusterConfig(kind="slurm", partition=slurm_cluster["partition"], cpus_per_task=1, mem_gb=1,
                            timeout_min=5, array_parallelism=2, snapshot_code=False)
    records = submit_stages(build_graph("sweep", plans), cluster, shared_dir / "logs", stage_module=PROBE)
    prep = {r.stages[0].job_id for r in records}
    trains = [r.stages[1].job_id for r in records]
    scores = [r.stages[2].job_id for r in records]
    assert len(prep) == 1 and "_" not in next(iter(prep))  # the shared stage: one job, once
    array = {t.split("_")[0] for t in trains}
    assert len(array) == 1 and sorted(t.split("_")[1] for t in trains) == ["0", "1", "2", "3"]  # one array
    assert "ArrayTaskThrottle=2" in job_details(trains[0])
    for train, score in zip(trains, scores):  # each score waits on exactly its own training task
        assert f"afterok:{train}" in job_details(score)
    wait_until(lambda: all((p.stages[2].stage_dir / "manifest.json").exists() for p in plans), 120,
               "every point's last stage to finish")
    for plan in plans:
        assert [r.state for r in pipeline_status(plan.run_dir)] == ["COMPLETE"] * 3
    assert json.loads((shared_dir / "state" / "prep-shared" / "rank0.json").read_text())["starts"] == 1


def test_hydra_sweep_points_share_their_prefix_as_one_graph(slurm_cluster, tmp_path):
    """The Hydra callback turns a 2-point multirun of the tiny demo into one graph: the shared
    prefix once, the differing ORPO stages as one array. Jobs are submitted held and cancelled."""
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
                "+cluster.merge.additional_parameters.hold=true", "+cluster.eval.additional_parameters.hold=true",
                f"output_root={tmp_path}", f"stages.orpo.beta={beta}"])
            callback.on_job_end(cfg, SimpleNamespace(status=JobStatus.COMPLETED))
        records = callback.on_multirun_end(cfg)
    jobs = [s.job_id for r in records for s in r.stages if s.job_id]
    try:
        assert len(records) == 2
        first, second = ({s.stage: s for s in r.stages} for r in records)
        for shared in ("tiny_init", "base_pretrain", "instruct_sft", "cpt", "sft"):
            assert first[shared].job_id == second[shared].job_id
        orpo = {first["orpo"].job_id, second["orpo"].job_id}
        assert len({j.split("_")[0] for j in orpo}) == 1 and len(orpo) == 2  # one array of two tasks
        assert f"afterok:{first['orpo'].job_id}" in job_details(first["merge"].job_id)
        assert first["merge"].job_id != second["merge"].job_id
    finally:
        subprocess.run(["scancel", *{j.split("_")[0] for j in jobs}], check=False)
        subprocess.run(["scancel", "-n", "sweep-tiny_demo.report"], check=False)
