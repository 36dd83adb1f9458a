"""Run a stage as N processes on this machine, the way Slurm would run N tasks.

Each rank is a fresh `python -m hpcadapt.worker SPEC` with the torch distributed
environment set, so a stage behaves identically here and on a cluster, and no trainer
state leaks from one stage into the next. Every rank's output is kept in the stage folder's
`logs/`; of rank 0's, the terminal shows hpcadapt's own lines and one progress line (all of
it with `verbose=true`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from hpcadapt.errors import StageFailed
from hpcadapt.plan import StagePlan


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }


PROGRESS = "hpcadapt: progress "  # lines the training loop prints for the progress display


def _tee(pipe, log_path: Path, echo: str) -> None:
    """Copy a rank's output into its log; show it on the terminal as `echo` says.

    "all" shows everything (verbose). "quiet" shows only hpcadapt's own lines (notices a user
    must see: a pad token chosen, a template borrowed, a fallback), and the training progress
    as one line that redraws on a terminal (elsewhere at each quarter). "none" shows nothing.
    """
    shown, pending = Progress(), b""
    with log_path.open("ab") as log:
        for chunk in iter(lambda: pipe.read1(4096), b""):
            log.write(chunk)
            log.flush()
            if echo == "all":
                sys.stdout.buffer.write(chunk)
            elif echo == "quiet":
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", errors="replace").rstrip()
                    if text.startswith(PROGRESS):
                        shown.update(text[len(PROGRESS):])
                    elif text.startswith("hpcadapt:"):
                        shown.clear()
                        sys.stdout.write(text + "\n")
            sys.stdout.flush()
    shown.clear()


class Progress:
    """One status line: redrawn in place on a terminal; printed at 25/50/75/100% elsewhere (logs, CI)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.width = 0
        self.quarter = 0

    def update(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r" + text.ljust(self.width))
            self.width = len(text)
            return
        percent = int(text.split("%")[0].rsplit("(", 1)[-1]) if "%" in text else 0
        if percent // 25 > self.quarter:
            self.quarter = percent // 25
            sys.stdout.write("  " + text + "\n")

    def clear(self) -> None:
        if self.tty and self.width:
            sys.stdout.write("\r" + " " * self.width + "\r")
            self.width = 0


def tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return "(no log)"
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])


class WarmWorker:
    """A single-process worker started ahead of its stage (`python -m hpcadapt.worker --warm`).

    It imports the training stack, then waits on stdin for a spec. The pipeline keeps one
    warming while the current stage runs, so the import overlaps training instead of
    preceding the next stage. Each stage still gets a fresh process: nothing leaks.
    Multi-process stages are started cold, with a rendezvous port chosen when they start.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hpcadapt.worker", "--warm"],
            env=rank_env(0, 1, port=0),  # the real port comes with the spec
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def assign(self, spec_path: Path, port: int) -> subprocess.Popen | None:
        """Hand over the stage and its rendezvous port, chosen now rather than when the
        worker started (a port free then may be taken since). None if this worker died
        while warming: the caller starts one cold instead."""
        if self.proc.poll() is not None:
            return None
        try:
            self.proc.stdin.write(f"{port} {spec_path}\n".encode())
            self.proc.stdin.close()
        except BrokenPipeError:
            return None
        return self.proc

    def discard(self) -> None:
        """Not needed after all: it has run nothing, so it is simply ended."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def run_stage_local(stage: StagePlan, warm: WarmWorker | None = None, echo: str = "quiet") -> None:
    """Start the stage's ranks, wait, and raise StageFailed with the log tail if any fails.

    A single-process stage runs in `warm`, when given, instead of a new process."""
    world = stage.nprocs
    log_dir = stage.spec_path.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs, threads = [], []
    for rank in range(world):
        log_path = log_dir / f"rank{rank}.log"
        proc = warm.assign(stage.spec_path, port) if warm is not None and world == 1 else None
        proc = proc or subprocess.Popen(
            [sys.executable, "-m", "hpcadapt.worker", str(stage.spec_path)],
            env=rank_env(rank, world, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so one Ctrl-C is handled here, once
        )
        thread = threading.Thread(target=_tee, args=(proc.stdout, log_path, echo if rank == 0 else "none"),
                                  daemon=True)
        thread.start()
        procs.append((rank, proc, log_path))
        threads.append(thread)
    try:
        failed = _wait(procs)
    except KeyboardInterrupt:
        _stop_all(procs)
        raise
    for t in threads:
        t.join(timeout=5)
    if failed is not None:
        rank, code, log_path = failed
        # The stage folder was never renamed into place, so the logs are still in staging.
        raise StageFailed(
            f"stage {stage.name!r} failed: rank {rank} exited with code {code}. "
            f"Log: {log_path}\n--- last lines ---\n{tail(log_path)}"
        )


def _wait(procs) -> tuple[int, int, Path] | None:
    """Wait for all ranks; as soon as one fails, stop the others (they would hang in a collective)."""
    while True:
        running = 0
        for rank, proc, log_path in procs:
            code = proc.poll()
            if code is None:
                running += 1
            elif code != 0:
                _stop_all(procs)
                return rank, code, log_path
        if running == 0:
            return None
        time.sleep(0.2)


def _stop_all(procs) -> None:
    for _, proc, _ in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + 10
    for _, proc, _ in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
