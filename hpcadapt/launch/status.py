"""`python -m hpcadapt ... status=true`: where each stage of the configured pipeline (or grid) stands.

A pipeline submitted to Slurm left `slurm_jobs.json` in its run folder: its stages are
shown with job id, Slurm state, elapsed time, log and, for failures, the reason and the
log's last lines. Otherwise the stage folders alone tell what is complete and what an
interrupted local run left to resume. A finished pipeline's table and verdict follow, and
the last line is the command that resumes or resubmits what is missing.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from hpcadapt.launch.slurm_record import read_record
from hpcadapt.launch.slurm_status import print_pipeline_status
from hpcadapt.stagedir import is_complete


def print_status(cfg: Any) -> None:
    from hpcadapt.grid import strategies_of
    from hpcadapt.plan import plan_pipeline

    missing = 0
    for strategy in strategies_of(cfg):
        plan = plan_pipeline(cfg, strategy)
        print(f"hpcadapt: pipeline {plan.name}, run folder {plan.run_dir}")
        if read_record(plan.run_dir) is not None:
            rows = print_pipeline_status(plan.run_dir)
            missing += sum(r.state != "COMPLETE" for r in rows)
        else:
            for stage in plan.stages:
                staging = stage.spec_path.parent
                if is_complete(stage.stage_dir):
                    state = "complete"
                elif (staging / "checkpoints").is_dir():
                    state = "interrupted (resumes from its checkpoints)"
                else:
                    state = "not run"
                missing += state != "complete"
                print(f"  {stage.name:<14} {stage.kind:<9} {state:<44} {stage.stage_dir}")
        print_results(plan)
    grids = sorted(Path(cfg.output_root).expanduser().resolve().glob(f"grids/{cfg.grid.name}-*/report.md"))
    if cfg.grid.strategies and grids:
        print("\n" + grids[-1].read_text())
    args = [a for a in sys.argv[1:] if not a.startswith("status=")]
    if missing:
        print(f"\n{missing} stage(s) not complete; to resume or resubmit them: python -m hpcadapt "
              f"{' '.join(shlex.quote(a) for a in args)}")


def print_results(plan: Any) -> None:
    """The finished evaluation's table and synergy verdict, as the run printed them."""
    evaluation = next((s.stage_dir for s in plan.stages if s.kind == "eval"), None)
    if evaluation is None or not is_complete(evaluation):
        return
    print("\n" + (evaluation / "table.md").read_text())
    summary = evaluation / "synergy" / "summary.txt"
    if summary.is_file():
        print(summary.read_text())
