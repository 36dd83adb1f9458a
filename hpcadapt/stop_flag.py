"""The request to stop a running stage at its next step boundary, and what stopping raises.

Set from a signal handler (Slurm's preemption or time-limit warning, hpcadapt/launch/slurm_job.py),
read by the training loop's checkpoint callback (hpcadapt/training.py): the stage then saves a
checkpoint and raises `StagePreempted`, and the job is requeued to resume from it.
"""

from __future__ import annotations

import threading

_stop = threading.Event()


class StagePreempted(Exception):
    """Training stopped on request after saving a checkpoint; the job should be requeued."""


def request_stop() -> None:
    """Ask the running stage to checkpoint and stop at the next step (signal-handler safe)."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()
