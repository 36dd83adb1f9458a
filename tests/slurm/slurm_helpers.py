"""What the Slurm tests print when a job does not reach the state they wait for."""

from __future__ import annotations

import subprocess
from pathlib import Path


def job_logs(log_out: str | Path, job_id: str) -> list[Path]:
    """Every task's stdout and stderr of a submitit job (all ranks, all requeues)."""
    return sorted(Path(log_out).parent.glob(f"{job_id}_*_log.*"))


def describe_jobs(job_ids: list[str], logs: list[Path], tail: int = 25) -> str:
    """Every run of each job as accounting saw it (requeues included), then each log's tail."""
    lines = []
    if job_ids:
        proc = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", ",".join(job_ids),
                               "-o", "JobID,JobName,State,ExitCode,Submit,Start,End,NodeList,Reason"],
                              capture_output=True, text=True)
        lines += ["sacct:", proc.stdout.strip() or proc.stderr.strip()]
        proc = subprocess.run(
            ["squeue", "-h", "-o", "%i %j %T %r", "-j", ",".join(job_ids)], capture_output=True, text=True
        )
        lines += ["squeue:", proc.stdout.strip() or "(none queued)"]
    for log in logs:
        text = log.read_text(errors="replace").replace("\r", "\n") if log.is_file() else "(missing)"
        kept = [ln for ln in text.splitlines() if ln.strip()][-tail:]
        lines += [f"--- {log} (last {len(kept)} lines)", *kept]
    return "\n".join(lines)
