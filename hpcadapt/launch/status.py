"""`python -m hpcadapt ... status=true`: where each stage of the configured pipeline stands.

A pipeline submitted to Slurm left `slurm_jobs.json` in its run folder: its stages are
shown with job id, Slurm state, elapsed time, log and, for failures, the reason and
the log's last lines. Otherwise the stage folders alone tell what is complete and
what an interrupted local run left to resume.
"""

from __future__ import annotations

from typing import Any

from hpcadapt.launch.slurm_record import read_record
from hpcadapt.launch.slurm_status import print_pipeline_status
from hpcadapt.stagedir import is_complete


def print_status(cfg: Any) -> None:
    from hpcadapt.plan import plan_pipeline

    plan = plan_pipeline(cfg)
    print(f"hpcadapt: pipeline {plan.name}, run folder {plan.run_dir}")
    if read_record(plan.run_dir) is not None:
        print_pipeline_status(plan.run_dir)
        return
    for stage in plan.stages:
        staging = stage.spec_path.parent
        if is_complete(stage.stage_dir):
            state = "complete"
        elif (staging / "checkpoints").is_dir():
            state = "interrupted (resumes from its checkpoints)"
        else:
            state = "not run"
        print(f"  {stage.name:<14} {stage.kind:<9} {state:<44} {stage.stage_dir}")
