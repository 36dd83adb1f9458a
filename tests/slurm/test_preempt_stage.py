"""A real CPT stage as a 2-node ZeRO-3 job, preempted: it checkpoints on all ranks, is
requeued, resumes, and ends with the weights and loss of an uninterrupted run.

Both runs are submitted at once (python -m hpcadapt, two output roots) so they share
the wall time; only the first is sent the preemption signal. The uninterrupted run
also shows ZeRO-3 at work: each rank held half of every parameter, and rank 0 saved
a complete model. The first ZeRO-3 run on a machine JIT-compiles DeepSpeed's
shared-memory op (about a minute, ~1 GB per compiler): hence 5 GB per job.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import submitit
from slurm_helpers import describe_jobs, job_logs

from hpcadapt.launch.slurm_record import read_record

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEPS = 24
# Resume replays the same batches from the same optimizer state; only float summation
# order may differ. Stated tolerance for weights and loss:
ATOL = 1e-5
RTOL = 1e-4


def submit_cpt(root: Path, partition: str) -> tuple[Path, dict]:
    cmd = [sys.executable, "-m", "hpcadapt", "+experiment=tiny_demo", "cluster.kind=slurm",
           f"cluster.partition={partition}", "cluster.cpus_per_task=1", "cluster.mem_gb=5",
           "cluster.nodes=2", "cluster.tasks_per_node=1", "deepspeed=zero3",
           "stages.base_pretrain.per_device_train_batch_size=4",
           "cluster.timeout_min=15", "pipeline.prepare=[tiny_init,base_pretrain]", "pipeline.chain=[]",
           "pipeline.merge=false", "pipeline.evaluate=false", f"stages.base_pretrain.max_steps={STEPS}",
           "stages.base_pretrain.logging_steps=1", f"output_root={root}"]
    # Submitted from a shell with torchrun leftovers: both jobs share the nodes, and an
    # inherited MASTER_PORT would give their rendezvous one port (EADDRINUSE, or worse).
    leftovers = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **leftovers}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next(root.glob("runs/*/slurm_jobs.json")).parent
    return run_dir, {s.stage: s for s in read_record(run_dir).stages}


def steps_logged(log: Path) -> int:
    text = log.read_text(errors="replace") if log.is_file() else ""
    done = [int(m) for m in re.findall(rf"(\d+)/{STEPS} \[", text)]
    return max(done, default=0)


def job_history(job_id: str) -> list[str]:
    """The job's states, one per run (-D keeps the runs before a requeue)."""
    return subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State"],
                          capture_output=True, text=True, check=True).stdout.split()


def load_weights(stage_dir: Path) -> dict:
    from safetensors.torch import load_file

    weights = {}
    for file in sorted(stage_dir.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    return weights


def test_preempted_two_node_zero3_stage_resumes_and_matches_an_uninterrupted_run(wait_until, slurm_cluster, shared_dir):
    import torch

    run_a, jobs_a = submit_cpt(shared_dir / "preempted", slurm_cluster["partition"])
    run_b, jobs_b = submit_cpt(shared_dir / "reference", slurm_cluster["partition"])
    cpt_a, cpt_b = jobs_a["base_pretrain"], jobs_b["base_pretrain"]

    def explain() -> str:
        return describe_jobs([cpt_a.job_id, cpt_b.job_id], job_logs(cpt_a.log_out, cpt_a.job_id)
                             + job_logs(cpt_b.log_out, cpt_b.job_id))

    wait_until(lambda: steps_logged(Path(cpt_a.log_err)) >= 6, 300, "the stage to train a few steps", explain)
    submitit.SlurmJob(folder=Path(cpt_a.log_out).parent, job_id=cpt_a.job_id)._interrupt()

    def complete(stage_dir: str) -> bool:
        return (Path(stage_dir) / "manifest.json").is_file()

    wait_until(lambda: complete(cpt_a.stage_dir) and complete(cpt_b.stage_dir), 400, "both runs to finish", explain)
    log = Path(cpt_a.log_out).read_text(errors="replace")
    assert "resuming" in log, "the requeued job did not resume from a checkpoint"
    wait_until(lambda: job_history(cpt_a.job_id)[-1:] == ["COMPLETED"], 60, "the requeued job to end", explain)
    assert "REQUEUED" in job_history(cpt_a.job_id)

    metrics_a = json.loads((Path(cpt_a.stage_dir) / "manifest.json").read_text())["metrics"]
    metrics_b = json.loads((Path(cpt_b.stage_dir) / "manifest.json").read_text())["metrics"]
    assert metrics_a["steps"] == metrics_b["steps"] == STEPS
    assert metrics_a["last_loss"] == pytest.approx(metrics_b["last_loss"], rel=RTOL, abs=ATOL)
    weights_a, weights_b = load_weights(Path(cpt_a.stage_dir)), load_weights(Path(cpt_b.stage_dir))
    assert weights_a.keys() == weights_b.keys() and weights_a
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], atol=ATOL, rtol=RTOL, msg=name)

    # ZeRO-3: parameters partitioned over both ranks, on both nodes; the saved model complete.
    parts = [json.loads((Path(cpt_b.stage_dir) / "logs" / f"partition_rank{r}.json").read_text()) for r in (0, 1)]
    full = parts[0]["full_numel"]
    assert {p["world_size"] for p in parts} == {2}
    for part in parts:  # about half of every parameter per rank (padding aside)
        assert 0.45 * full <= part["local_numel"] <= 0.55 * full, part
    saved = sum(t.numel() for t in weights_b.values())
    assert saved >= 0.99 * full, f"saved {saved} of {full} parameters: the ZeRO-3 save is incomplete"
    nodes = subprocess.run(["sacct", "-n", "-X", "-P", "-j", cpt_b.job_id, "-o", "NodeList"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert nodes[-1] == "n[1-2]"
