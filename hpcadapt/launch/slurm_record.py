"""What a pipeline submission left behind: `<run_dir>/slurm_jobs.json`.

Written by `slurm_submit` when the jobs are in the queue, read by `status=true` and by
the next submission (which must not submit a stage twice while its job still runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

RECORD_NAME = "slurm_jobs.json"


@dataclass
class StageJobInfo:
    """What the user needs to find a stage's job again."""

    stage: str
    job_id: str | None  # None: already complete (or dry run), nothing submitted
    state: str  # submitted | already-complete | already-queued | dry-run
    stage_dir: str
    log_out: str = ""
    log_err: str = ""
    depends_on_jobs: list[str] = field(default_factory=list)


@dataclass
class SubmissionRecord:
    pipeline: str
    run_dir: str
    submitted_at: float
    code_snapshot: str | None
    stages: list[StageJobInfo]


def read_record(run_dir: Path) -> SubmissionRecord | None:
    path = Path(run_dir) / RECORD_NAME
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data["stages"] = [StageJobInfo(**s) for s in data["stages"]]
    return SubmissionRecord(**data)
