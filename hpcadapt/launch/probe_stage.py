"""A stand-in stage that follows the worker's stop/resume protocol without training.

Same contract as `hpcadapt.worker`: `run_stage(spec_path)`, `request_stop()` (safe
from a signal handler) and `StagePreempted`. It counts steps and keeps its progress
in a JSON file per rank, so tests can check that a preempted or timed-out job stops
at a step boundary, is requeued and resumes where it stopped, in seconds and with
no model. The spec is JSON: {"state_dir": ..., "total_steps": N, "step_s": S}, plus
optionally "stage_dir" (rank 0 then renames a staging folder with a complete
manifest into place at the end, like a real stage) and "fail": true (raise at once).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

_stop_requested = threading.Event()


class StagePreempted(Exception):
    """The stage saved its progress on request and must be requeued to finish."""


def request_stop() -> None:
    _stop_requested.set()


def run_stage(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("fail"):
        raise RuntimeError(f"probe stage told to fail by {spec_path}")
    rank = int(os.environ.get("RANK", "0"))
    state_file = Path(spec["state_dir"]) / f"rank{rank}.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"step": 0, "starts": 0, "stops": 0}
    state["starts"] += 1
    state["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    state["code"] = __file__  # which copy of the code ran (the submission's snapshot?)
    _save(state_file, state)
    while state["step"] < spec["total_steps"]:
        if _stop_requested.is_set():
            state["stops"] += 1
            _save(state_file, state)
            raise StagePreempted(f"stopped at step {state['step']} of {spec['total_steps']}")
        time.sleep(spec["step_s"])
        state["step"] += 1
        _save(state_file, state)
    if spec.get("stage_dir") and rank == 0:
        _finalize(Path(spec["stage_dir"]), state)


def _finalize(stage_dir: Path, state: dict) -> None:
    staging = stage_dir.parent / f".staging-probe-{stage_dir.name}"
    staging.mkdir(parents=True, exist_ok=True)
    _save(staging / "manifest.json", {"complete": True, "steps": state["step"]})
    staging.rename(stage_dir)


def _save(path: Path, state: dict) -> None:
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(state))
    staging.replace(path)
