"""A real CPT stage as one 2-node ZeRO-3 job, submitted the way users do (python -m hpcadapt).

Each node runs one task; DeepSpeed (gloo on CPU) partitions every parameter over both
ranks, and rank 0 saves a complete model. The first ZeRO-3 run on a machine also
JIT-compiles DeepSpeed's shared-memory op (about a minute, ~1 GB per compiler), hence
the generous memory limit and the slow mark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcadapt.launch.slurm_record import read_record
from hpcadapt.launch.slurm_status import pipeline_status

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_two_node_zero3_cpt_stage_partitions_parameters_and_saves_a_complete_model(
        wait_until, slurm_cluster, shared_dir):
    from safetensors import safe_open

    cmd = [sys.executable, "-m", "hpcadapt", "+experiment=tiny_demo", "cluster.kind=slurm",
           f"cluster.partition={slurm_cluster['partition']}", "cluster.nodes=2", "cluster.tasks_per_node=1",
           "cluster.cpus_per_task=1", "cluster.mem_gb=6", "cluster.timeout_min=15", "deepspeed=zero3",
           "pipeline.prepare=[tiny_init,base_pretrain]", "pipeline.chain=[]", "pipeline.merge=false",
           "pipeline.evaluate=false", "stages.base_pretrain.max_steps=4",
           "stages.base_pretrain.per_device_train_batch_size=4", f"output_root={shared_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted pipeline" in proc.stdout

    run_dir = next(shared_dir.glob("runs/*/slurm_jobs.json")).parent
    stages = {s.stage: s for s in read_record(run_dir).stages}
    stage_dir = Path(stages["base_pretrain"].stage_dir)

    def finished() -> bool:
        rows = {r.stage: r for r in pipeline_status(run_dir)}
        if rows["base_pretrain"].reason and rows["base_pretrain"].state not in ("PENDING", "RUNNING"):
            raise AssertionError(f"stage failed: {rows['base_pretrain']}")
        return rows["base_pretrain"].state == "COMPLETE"

    wait_until(finished, 420, "the ZeRO-3 stage to complete")

    parts = [json.loads((stage_dir / "logs" / f"partition_rank{r}.json").read_text()) for r in (0, 1)]
    full = parts[0]["full_numel"]
    assert {p["world_size"] for p in parts} == {2}
    for part in parts:  # each rank holds about half of every parameter (padding aside)
        assert 0.45 * full <= part["local_numel"] <= 0.55 * full, part
    saved = 0
    for file in stage_dir.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            saved += sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    assert saved >= full * 0.99, f"saved {saved} parameters of {full}: the ZeRO-3 save is incomplete"

    nodes = subprocess.run(["sacct", "-n", "-X", "-P", "-j", stages["base_pretrain"].job_id, "-o", "NodeList"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert nodes[-1] == "n[1-2]"


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
