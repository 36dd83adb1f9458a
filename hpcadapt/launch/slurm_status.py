"""Job states from Slurm accounting, with the reason a job failed in plain words.

`sacct` is the one source that still knows a job after it left the queue; `squeue`
adds why a pending job waits (a dependency that can never be satisfied shows only
there while the job is still queued). No torch, no submitit: runs on a login node.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable

from hpcadapt.errors import HpcadaptError

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
    """Records for the given job ids (array ids expand to their tasks)."""
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return {}
    out = _run(["sacct", "-n", "-P", "-D", "-j", ",".join(ids), "-o", ",".join(SACCT_FIELDS)])
    records = parse_sacct(out)
    pending = [r.job_id for r in records.values() if r.state == "PENDING"]
    if pending:
        for job_id, reason in _squeue_reasons(pending).items():
            if job_id in records:
                records[job_id].pending_reason = reason
    return records


def _squeue_reasons(job_ids: list[str]) -> dict[str, str]:
    try:
        out = _run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%r"])
    except SlurmUnavailable:
        return {}
    reasons = {}
    for line in out.splitlines():
        if "|" in line:
            job_id, reason = line.split("|", 1)
            reasons[job_id.strip()] = reason.strip()
    return reasons


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
        if record.pending_reason == "DependencyNeverSatisfied":
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
