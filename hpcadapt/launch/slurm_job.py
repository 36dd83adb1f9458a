"""What runs inside a Slurm job: one task per GPU, each running the stage code.

submitit starts this callable in every task of the job (`srun` with
`--ntasks-per-node = GPUs per node`). Each task derives the torch distributed
environment from Slurm's variables and calls the same `run_stage` as a local run.

Preemption and time limits: Slurm sends USR2 to every task (90 s before the time
limit, or when preempted). submitit's own handler would checkpoint and requeue at
once, in the middle of an optimizer step. We swap it for one that only asks the
stage to stop; training then saves a checkpoint at the next step boundary on all
ranks and `run_stage` raises `StagePreempted`. Only then does rank 0 hand over to
submitit's handler, which counts timeouts, pickles this callable again and runs
`scontrol requeue`. The requeued job resumes from the checkpoint on disk.
"""

from __future__ import annotations

import importlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from submitit.helpers import Checkpointable, TorchDistributedEnvironment

# The module that provides run_stage(spec_path), request_stop() and StagePreempted.
DEFAULT_STAGE_MODULE = "hpcadapt.worker"
# How long ranks other than 0 wait for rank 0's requeue to end them.
REQUEUE_WAIT_S = 120


DISTRIBUTED_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def export_torch_distributed_env() -> dict[str, str]:
    """Export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from Slurm.

    Values inherited from the submitting shell (sbatch exports its whole environment)
    are dropped first: a MASTER_PORT left over from a torchrun session would otherwise
    give every job on a node the same port, and the second job's rendezvous would fail
    or join the first one's. The port is then derived from the job id, stable across
    requeues.

    CUDA_VISIBLE_DEVICES stays as Slurm set it (all GPUs of the node): DeepSpeed and
    the HF Trainer pick `cuda:LOCAL_RANK`, which fails on ranks > 0 if each task only
    sees one device.
    """
    for key in DISTRIBUTED_KEYS:
        os.environ.pop(key, None)
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return {key: os.environ[key] for key in DISTRIBUTED_KEYS}


class StageJob(Checkpointable):
    """One pipeline stage as a requeueable Slurm job.

    Pickled at submission with nothing but paths and names, so a requeue re-runs the
    same stage; all progress lives in the stage's staging folder.
    """

    def __init__(self, spec_path: str, stage_name: str, stage_module: str = DEFAULT_STAGE_MODULE) -> None:
        self.spec_path = spec_path
        self.stage_name = stage_name
        self.stage_module = stage_module

    def __call__(self) -> dict[str, Any]:
        env = export_torch_distributed_env()
        stage = importlib.import_module(self.stage_module)
        submitit_handler = signal.getsignal(signal.SIGUSR2)

        def ask_to_stop(signum: int, frame: Any) -> None:
            stage.request_stop()

        signal.signal(signal.SIGUSR2, ask_to_stop)
        try:
            stage.run_stage(self.spec_path)
        except stage.StagePreempted:
            self._hand_over_requeue(submitit_handler, int(env["RANK"]))
            raise  # only reached when the requeue did not end this process
        return {"stage": self.stage_name, "rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"])}

    def _hand_over_requeue(self, submitit_handler: Callable | None, rank: int) -> None:
        """Rank 0 requeues through submitit (it counts timeouts); others wait to be ended."""
        if rank != 0:
            time.sleep(REQUEUE_WAIT_S)
            return
        if callable(submitit_handler):
            # Checkpoints this callable, runs `scontrol requeue`, exits; or raises
            # UncompletedJobError when timeouts are used up.
            submitit_handler(signal.SIGUSR2, None)
