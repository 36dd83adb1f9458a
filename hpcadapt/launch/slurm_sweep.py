"""A sweep (Hydra multirun) on Slurm as job arrays, submitted at once.

hydra-submitit-launcher would run each sweep point as one job and keep a login-node
process waiting for all of them; multi-node stages that run for hours make that a
poor fit. Instead every point is planned, and per stage name:

- a stage that is identical in all points (same hash-named folder) is one job;
- a stage that differs is one job array, one task per distinct folder, at most
  `cluster.array_parallelism` running at once.

Task i of an array waits on task i of the array before it when both enumerate the
points the same way (`aftercorr`), otherwise on the whole job (`afterok`). Each
point's run folder gets the usual `slurm_jobs.json`, so `status=true` works per point.

Hydra side: `SweepToArrays` is a Hydra callback (`hydra.callbacks`) that collects each
multirun job's config and submits all of them when the multirun ends.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback

from hpcadapt.launch.slurm_record import RECORD_NAME, StageJobInfo, SubmissionRecord
from hpcadapt.launch.slurm_submit import make_executor, require_sbatch, snapshot_code, submit_or_explain


@dataclass
class SubmittedUnit:
    """One stage name's submission: a single job or an array, and which task serves which point."""

    job_id: str  # for an array, the array's id (tasks are job_id_<i>)
    is_array: bool
    task_of_point: dict[int, int]  # point -> array task (points whose stage was done are absent)
    logs: dict[int, tuple[str, str]]  # task -> (stdout, stderr)


def submit_sweep(plans: list[Any], cluster: Any, log_root: Path, stage_module: str = "hpcadapt.worker",
                 ) -> dict[str, SubmittedUnit]:
    """Submit every point's unfinished stages; shared stages once, differing ones as arrays."""
    from hpcadapt.launch.slurm_job import StageJob
    from hpcadapt.stagedir import write_json_atomic

    require_sbatch()
    snapshot = snapshot_code(log_root / "code") if cluster.snapshot_code else None
    sweep_dir = log_root / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    units: dict[str, SubmittedUnit] = {}
    for name in stage_names_in_order(plans):
        points = [(p, plan.stage(name)) for p, plan in enumerate(plans) if has_stage(plan, name)]
        todo = [(p, s) for p, s in points if not s.done]
        if not todo:
            continue
        distinct: dict[Path, Any] = {}
        task_of_point: dict[int, int] = {}
        for p, stage in todo:
            index = list(distinct).index(stage.stage_dir) if stage.stage_dir in distinct else len(distinct)
            distinct.setdefault(stage.stage_dir, stage)
            task_of_point[p] = index
        stages = list(distinct.values())
        deps = dependency_clauses(units, {d for _, s in todo for d in s.depends_on}, task_of_point, len(stages))
        executor = make_executor(cluster, sweep_dir / name, job_name=f"{plans[0].name}.{name}",
                                 nprocs=stages[0].nprocs, dependency_job_ids=[], snapshot=snapshot,
                                 kind=stages[0].kind)
        extra = dict(executor._executor.parameters.get("additional_parameters") or {})
        if deps:
            extra["dependency"] = ",".join(deps)
            extra["kill-on-invalid-dep"] = "yes"
        executor.update_parameters(slurm_additional_parameters=extra,
                                   slurm_array_parallelism=int(cluster.array_parallelism))
        callables = [StageJob(str(s.spec_path), name, stage_module=stage_module) for s in stages]
        if len(callables) == 1:
            job = submit_or_explain(executor, callables[0], name)
            units[name] = SubmittedUnit(job.job_id, False, task_of_point, {0: (str(job.paths.stdout),
                                                                              str(job.paths.stderr))})
        else:
            jobs = submit_array_or_explain(executor, callables, name)
            units[name] = SubmittedUnit(jobs[0].job_id.split("_")[0], True, task_of_point,
                                        {i: (str(j.paths.stdout), str(j.paths.stderr)) for i, j in enumerate(jobs)})
    for p, plan in enumerate(plans):
        infos = []
        for stage in plan.stages:
            unit = units.get(stage.name)
            if stage.done or unit is None or p not in unit.task_of_point:
                infos.append(StageJobInfo(stage.name, None, "already-complete", str(stage.stage_dir)))
                continue
            task = unit.task_of_point[p]
            job_id = f"{unit.job_id}_{task}" if unit.is_array else unit.job_id
            out, err = unit.logs[task if unit.is_array else 0]
            infos.append(StageJobInfo(stage.name, job_id, "submitted", str(stage.stage_dir), out, err))
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        record = SubmissionRecord(plan.name, str(plan.run_dir), time.time(), str(snapshot) if snapshot else None, infos)
        write_json_atomic(plan.run_dir / RECORD_NAME, asdict(record))
    print_sweep(plans, units)
    return units


def submit_array_or_explain(executor: Any, callables: list[Any], stage_name: str):
    import submitit

    from hpcadapt.launch.slurm_submit import SubmissionRejected

    try:
        return executor.submit_array(callables)
    except submitit.core.utils.FailedJobError as e:
        raise SubmissionRejected(f"sbatch rejected the array for stage {stage_name!r}: {str(e).strip()}") from None


def print_sweep(plans: list[Any], units: dict[str, SubmittedUnit]) -> None:
    print(f"\nhpcadapt: sweep of {len(plans)} points submitted")
    for name, unit in units.items():
        kind = f"array of {len(unit.logs)}" if unit.is_array else "one job"
        print(f"  {name:<14} job {unit.job_id:<10} {kind}")
    for plan in plans:
        print(f"  point run folder {plan.run_dir}")


class SweepToArrays(Callback):
    """Hydra callback: collect each multirun job's config, submit them as arrays at the end.

    Enable with `hydra.callbacks.slurm_sweep._target_=hpcadapt.launch.slurm_sweep.SweepToArrays`;
    the task function must only validate (not submit) when `in_multirun()` and cluster=slurm.
    """

    def __init__(self) -> None:
        super().__init__()
        self.configs: list[Any] = []

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if config.cluster.kind == "slurm" and getattr(job_return, "status", None) is not None \
                and job_return.status.name == "COMPLETED":
            self.configs.append(config)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> dict[str, SubmittedUnit]:
        if not self.configs:
            return {}
        from hpcadapt.pipeline import prepare_data
        from hpcadapt.plan import plan_pipeline, write_specs

        plans = []
        for cfg in self.configs:
            prepare_data(cfg)
            plan = plan_pipeline(cfg)
            write_specs(plan)
            plans.append(plan)
        first = self.configs[0]
        log_root = Path(first.cluster.log_root or Path(first.output_root) / "slurm").expanduser().resolve()
        return submit_sweep(plans, first.cluster, log_root)


def in_multirun() -> bool:
    """True inside a Hydra multirun job (the callback then does the submitting)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------------
# Pure helpers below.


def has_stage(plan: Any, name: str) -> bool:
    return any(s.name == name for s in plan.stages)


def stage_names_in_order(plans: list[Any]) -> list[str]:
    names: list[str] = []
    for plan in plans:
        for stage in plan.stages:
            if stage.name not in names:
                names.append(stage.name)
    return names


def dependency_clauses(units: dict[str, SubmittedUnit], dep_names: set[str], task_of_point: dict[int, int],
                       n_tasks: int) -> list[str]:
    """Slurm dependency clauses on the submitted units of `dep_names`.

    `aftercorr` (task i after task i) only where the dependency is an array of the same
    size that serves every point with the same task index; `afterok` on the whole job
    otherwise (correct, just less parallel).
    """
    clauses = []
    for dep in sorted(dep_names):
        unit: Optional[SubmittedUnit] = units.get(dep)
        if unit is None:  # already complete
            continue
        aligned = (unit.is_array and n_tasks > 1 and len(unit.logs) == n_tasks
                   and all(unit.task_of_point.get(p) == t for p, t in task_of_point.items()))
        clauses.append(f"{'aftercorr' if aligned else 'afterok'}:{unit.job_id}")
    return clauses
