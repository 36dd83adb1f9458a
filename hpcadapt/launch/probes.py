"""Small job functions that check what a Slurm cluster gives a job.

They live in the installed package (not in tests) because submitit pickles functions
by reference: a node can only unpickle a function from a module it can import. The
tests of the local cluster use them, and they are a quick way to check a new site:
`executor.submit(probes.gloo_allreduce)` tells whether multi-node jobs can talk.
torch is imported inside the functions so this module stays light on a login node.
"""

from __future__ import annotations

import os
import socket
import time


def where_am_i() -> dict:
    """The node, rank and devices Slurm assigned to this task."""
    return {
        "hostname": socket.gethostname(),
        "node": os.environ.get("SLURMD_NODENAME", ""),
        "rank": int(os.environ.get("SLURM_PROCID", "0")),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }


def gloo_allreduce() -> dict:
    """Every task adds rank + 1 into one all_reduce over gloo; returns the sum it sees.

    CUDA_VISIBLE_DEVICES is left as Slurm set it: remapping it per task breaks the
    `set_device(LOCAL_RANK)` that DeepSpeed and the HF Trainer do on ranks > 0.
    """
    import torch
    import torch.distributed as dist

    from hpcadapt.launch.slurm_job import export_torch_distributed_env

    env = export_torch_distributed_env()
    dist.init_process_group(backend="gloo")
    try:
        value = torch.tensor([float(env["RANK"]) + 1.0])
        dist.all_reduce(value)
        return {
            "rank": int(env["RANK"]),
            "world_size": int(env["WORLD_SIZE"]),
            "local_rank": int(env["LOCAL_RANK"]),
            "node": os.environ.get("SLURMD_NODENAME", ""),
            "master_addr": env["MASTER_ADDR"],
            "sum": value.item(),
        }
    finally:
        dist.destroy_process_group()


def hold_memory(megabytes: int, seconds: float = 5.0) -> int:
    """Touch `megabytes` of memory and hold it; over the job's --mem this ends OUT_OF_MEMORY."""
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(seconds)
    return len(block)


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail_with(exit_code: int) -> None:
    """Exit the task with a given code, as a crashing stage would."""
    os._exit(exit_code)
