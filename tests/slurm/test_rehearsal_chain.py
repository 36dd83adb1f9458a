"""Llama-3.1's Instruct-CPT-SFT-ORPO-SLERP rehearsed as a chain of real Slurm jobs.

The submitting command returns at once; each stage is a job `afterok` on its inputs; the
merge and evaluation jobs ask for their own resources. The rehearsal's stand-ins carry
Llama 3's real 128,256-token tokenizer, its <|eot_id|> turns and its reserved pad token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_helpers import describe_jobs, job_logs

from hpcadapt.launch.slurm_record import read_record

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_llama_orpo_slerp_rehearsal_as_a_slurm_chain(wait_until, slurm_cluster, shared_dir):
    root = shared_dir / "out"
    submit = subprocess.run(
        [sys.executable, "-m", "hpcadapt", "+experiment=llama_orpo_slerp", "scale=rehearsal", "cluster=local_slurm",
         f"cluster.partition={slurm_cluster['partition']}", f"output_root={root}", "wandb.enabled=false"],
        env={**os.environ}, capture_output=True, text=True, timeout=300)
    assert submit.returncode == 0, submit.stderr[-3000:]
    run_dir = next(root.glob("runs/*/slurm_jobs.json")).parent
    jobs = read_record(run_dir).stages
    assert [j.stage for j in jobs] == ["cpt", "sft", "orpo", "merge", "eval"]

    def explain() -> str:
        logs = [log for j in jobs for log in job_logs(j.log_out, j.job_id)]
        return describe_jobs([j.job_id for j in jobs], logs, tail=15)

    wait_until((Path(jobs[-1].stage_dir) / "manifest.json").is_file, 1200, "the rehearsal's evaluation job", explain)
    for job in jobs:
        assert json.loads((Path(job.stage_dir) / "manifest.json").read_text())["complete"], job.stage
    instruct = root / "rehearsal" / "models" / "llama31" / "instruct"
    merged = Path(jobs[3].stage_dir)
    assert json.loads((merged / "config.json").read_text())["vocab_size"] == 128256
    assert (merged / "generation_config.json").read_bytes() == (instruct / "generation_config.json").read_bytes()
    cpt = json.loads((Path(jobs[0].stage_dir) / "manifest.json").read_text())["metrics"]
    assert "<|finetune_right_pad_id|>" in cpt["notes"][0]
    sft_generation = json.loads((Path(jobs[1].stage_dir) / "generation_config.json").read_text())
    assert sft_generation["eos_token_id"] == [128001, 128008, 128009]
