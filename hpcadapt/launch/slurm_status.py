"""Job states from Slurm accounting, with the reason a job failed in plain words.

`sacct` is the one source that still knows a job after it left the queue; `squeue`
adds why a pending job waits (a dependency that can never be satisfied shows only
there while the job is still queued). No torch, no submitit: runs on a login node.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hpcadapt.errors import HpcadaptError

SQUEUE_FORMAT = "%i|%j|%T|%M|%N|%r"
SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode", "Elapsed", "NodeList", "Reason")
FINISHED_OK = {"COMPLETED"}
STILL_GOING = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD"}


class SlurmUnavailable(HpcadaptError):
    """No Slurm client commands on this machine, or the controller does not answer."""


@dataclass
class JobRecord:
    """One job (or array task) as accounting sees it, steps folded in."""

    job_id: str
    name: str
    state: str  # COMPLETED, FAILED, OUT_OF_MEMORY, TIMEOUT, CANCELLED, PENDING, ...
    exit_code: int
    signal: int
    elapsed: str
    node_list: str
    pending_reason: str = ""  # squeue/sacct reason, e.g. DependencyNeverSatisfied
    cancelled_by: str = ""

    @property
    def finished(self) -> bool:
        return self.state not in STILL_GOING

    @property
    def failed(self) -> bool:
        return self.finished and self.state not in FINISHED_OK

    def reason(self) -> str:
        """Why the job is not (yet) a success, in words a user can act on; '' if it is."""
        return explain(self)


def query_jobs(job_ids: Iterable[str]) -> dict[str, JobRecord]:
    """Records for the given job ids (array ids expand to their tasks).

    Accounting learns of a job a moment after sbatch returns, so jobs still in the
    queue are taken from squeue, which also gives a pending job's reason.
    """
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return {}
    out = _run(["sacct", "-n", "-P", "-D", "-j", ",".join(ids), "-o", ",".join(SACCT_FIELDS)])
    records = parse_sacct(out)
    queued = parse_squeue(_run(["squeue", "-h", "-r", "--me", "-o", SQUEUE_FORMAT]))
    wanted = set(ids)
    for job_id, record in queued.items():
        if job_id not in wanted and job_id.split("_")[0] not in wanted:
            continue
        if job_id not in records or record.state in STILL_GOING:
            records[job_id] = record
    return records


def queued_jobs(job_ids: Iterable[str]) -> dict[str, JobRecord]:
    """The given jobs that are still in the queue (pending, running, requeued)."""
    wanted = {str(j) for j in job_ids if j}
    queued = parse_squeue(_run(["squeue", "-h", "-r", "--me", "-o", SQUEUE_FORMAT]))
    return {job_id: r for job_id, r in queued.items() if job_id in wanted}


@dataclass
class StageStatus:
    """One row of `status=true`: a stage, its job and, for failures, why and the log's end."""

    stage: str
    job_id: str | None
    state: str  # COMPLETE (manifest), NOT SUBMITTED, or the job's Slurm state
    elapsed: str
    log: str
    reason: str = ""
    log_tail: str = ""


def pipeline_status(run_dir: Path, tail_lines: int = 15) -> list[StageStatus]:
    """Each stage of the submission recorded in `run_dir`, joined with sacct and manifests."""
    from hpcadapt.launch.slurm_record import read_record
    from hpcadapt.stagedir import is_complete

    record = read_record(run_dir)
    if record is None:
        raise HpcadaptError(f"{run_dir} has no Slurm submission record (slurm_jobs.json): was it submitted with "
                            "cluster=slurm and the same overrides?")
    jobs = query_jobs([s.job_id for s in record.stages if s.job_id])
    rows = []
    for info in record.stages:
        job = jobs.get(info.job_id or "")
        if is_complete(Path(info.stage_dir)):
            state, reason = "COMPLETE", ""
        elif job is None:
            state, reason = ("NOT SUBMITTED" if not info.job_id else "UNKNOWN"), ""
        else:
            state, reason = job.state, job.reason()
            if job.state == "COMPLETED":
                state, reason = "COMPLETED", "the job ended but the stage folder is not complete"
        row = StageStatus(info.stage, info.job_id, state, job.elapsed if job else "", info.log_err or info.log_out,
                          reason)
        if reason and job is not None and job.state not in ("PENDING", "CANCELLED"):
            row.log_tail = log_tail([Path(info.log_err), Path(info.log_out)], tail_lines)
        rows.append(row)
    return rows


def print_pipeline_status(run_dir: Path) -> list[StageStatus]:
    """Print one line per stage (and the reason and log tail for failures); return the rows."""
    rows = pipeline_status(run_dir)
    print(f"{'stage':<14} {'job':<10} {'state':<16} {'elapsed':<10} log")
    for r in rows:
        print(f"{r.stage:<14} {r.job_id or '-':<10} {r.state:<16} {r.elapsed or '-':<10} {r.log or '-'}")
        if r.reason:
            print(f"{'':<14} reason: {r.reason}")
        if r.log_tail:
            print("\n".join(f"{'':<14} | {line}" for line in r.log_tail.splitlines()))
    return rows


def log_tail(paths: list[Path], lines: int) -> str:
    """The last lines of the first of `paths` that has any text (stderr before stdout)."""
    for path in paths:
        if str(path) not in ("", ".") and path.is_file():
            text = path.read_text(errors="replace").rstrip()
            if text:
                return "\n".join(text.splitlines()[-lines:])
    return ""


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        raise SlurmUnavailable(
            f"`{cmd[0]}` not found: this machine has no Slurm client. Use cluster=local, or start "
            "the local test cluster with `bash slurm/local-cluster.sh up` (as root)."
        )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise SlurmUnavailable(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


# ---------------------------------------------------------------------------------
# Pure parsing and wording below.


def parse_sacct(text: str) -> dict[str, JobRecord]:
    """Fold `sacct -P -o JobID,JobName,State,ExitCode,Elapsed,NodeList,Reason` lines by job.

    With -D (duplicates) a requeued job appears once per run; the last line wins.
    A step that ran out of memory marks the whole job OUT_OF_MEMORY even where the
    allocation line says FAILED or CANCELLED.
    """
    records: dict[str, JobRecord] = {}
    step_states: dict[str, set[str]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < len(SACCT_FIELDS):
            continue
        job_id, name, state, exit_code, elapsed, node_list, reason = parts[: len(SACCT_FIELDS)]
        state_word, _, by = state.partition(" by ")
        if "." in job_id:  # a step: 12.batch, 12.0, 12_3.batch
            step_states.setdefault(job_id.split(".", 1)[0], set()).add(state_word)
            continue
        code, _, sig = exit_code.partition(":")
        records[job_id] = JobRecord(
            job_id=job_id,
            name=name,
            state=state_word,
            exit_code=int(code or 0),
            signal=int(sig or 0),
            elapsed=elapsed,
            node_list=node_list,
            pending_reason="" if reason in ("None", "") else reason,
            cancelled_by=by.strip(),
        )
    for job_id, states in step_states.items():
        record = records.get(job_id)
        if record and "OUT_OF_MEMORY" in states and record.state != "COMPLETED":
            record.state = "OUT_OF_MEMORY"
    return records


def parse_squeue(text: str) -> dict[str, JobRecord]:
    """Parse `squeue -h -o '%i|%j|%T|%M|%N|%r'` lines (job, name, state, time, nodes, reason)."""
    records = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 6:
            continue
        job_id, name, state, elapsed, node_list, reason = parts[:6]
        records[job_id] = JobRecord(job_id=job_id, name=name, state=state, exit_code=0, signal=0, elapsed=elapsed,
                                    node_list=node_list, pending_reason="" if reason == "None" else reason)
    return records


def explain(record: JobRecord) -> str:
    """A one-line reason for a job that failed or cannot start; '' for a healthy one."""
    state = record.state
    if state == "COMPLETED":
        return ""
    if state == "PENDING":
        if record.pending_reason == "DependencyNeverSatisfied":
            return "will never start: a job it depends on did not complete (dependency never satisfied)"
        return ""
    if state in STILL_GOING:
        return ""
    if state == "OUT_OF_MEMORY":
        return "out of memory: a task went over the job's memory limit (raise cluster.mem_gb)"
    if state == "TIMEOUT":
        return f"time limit reached after {record.elapsed} (raise cluster.timeout_min or cluster.max_num_timeout)"
    if state == "CANCELLED":
        # --kill-on-invalid-dep cancels a dependant without a user; sacct keeps "Dependency".
        never_started = record.node_list in ("", "None assigned")
        if not record.cancelled_by and (record.pending_reason.startswith("Dependency") or never_started):
            return "cancelled: a job it depends on did not complete (dependency never satisfied)"
        who = f" by uid {record.cancelled_by}" if record.cancelled_by else ""
        return f"cancelled{who}"
    if state == "FAILED":
        if record.signal:
            return f"failed: killed by signal {record.signal}"
        return f"failed with exit code {record.exit_code} (see the job's log)"
    if state == "NODE_FAIL":
        return f"a node failed ({record.node_list})"
    if state == "PREEMPTED":
        return "preempted and not requeued"
    return state.lower().replace("_", " ")
