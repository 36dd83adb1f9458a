"""The tiny demo submitted to the local cluster at once, as a chain of dependent jobs,
ends exactly where the same demo run on this machine ends.

Both runs start together (the local one in a subprocess) with fewer steps than the
demo's defaults. Every stage runs as one process in both, with the same seeds and one
thread each, so losses, merged weights and benchmark scores must agree to float noise.
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

SHORT = [
    "+experiment=tiny_demo",
    "stages.base_pretrain.max_steps=12",
    "stages.instruct_sft.max_steps=8",
    "stages.cpt.max_steps=12",
    "stages.sft.max_steps=8",
    "stages.orpo.max_steps=6",
    "eval.bootstrap_samples=200",
]
TRAINING = ["base_pretrain", "instruct_sft", "cpt", "sft", "orpo"]


def hpcadapt(*overrides: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpcadapt", *SHORT, *overrides], env={**os.environ},
                            text=True, **popen)


def manifests(root: Path) -> dict[str, dict]:
    """Each finished stage's manifest, by stage name (folder names carry a settings hash)."""
    found = {}
    for path in (root / "stages").glob("*/manifest.json"):
        manifest = json.loads(path.read_text())
        found[path.parent.name] = manifest
    return found


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    """{"model/set/metric": value} from the evaluation's nested summary."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def merged_weights(root: Path) -> dict:
    from safetensors.torch import load_file

    (merge_dir,) = [p for p in (root / "stages").iterdir() if p.name.startswith("merge-")]
    weights = {}
    for file in sorted(merge_dir.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    return weights


def test_demo_chain_on_slurm_matches_the_local_run(wait_until, slurm_cluster, shared_dir):
    import torch

    local_root, slurm_root = shared_dir / "local", shared_dir / "slurm"
    local = hpcadapt("cluster=local", f"output_root={local_root}",
                     stdout=open(shared_dir / "local.log", "w"), stderr=subprocess.STDOUT)
    submit = hpcadapt("cluster=local_slurm", f"cluster.partition={slurm_cluster['partition']}",
                      f"output_root={slurm_root}", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = submit.communicate(timeout=120)
    assert submit.returncode == 0, err[-3000:]
    run_dir = next(slurm_root.glob("runs/*/slurm_jobs.json")).parent
    jobs = read_record(run_dir).stages
    assert [j.stage for j in jobs] == ["tiny_init", *TRAINING, "merge", "eval"]
    assert all(j.job_id for j in jobs) and all(j.depends_on_jobs for j in jobs[1:]), jobs
    assert all(j.job_id in out for j in jobs), "the command must print every job id"

    def explain() -> str:
        logs = [log for j in jobs for log in job_logs(j.log_out, j.job_id)]
        return describe_jobs([j.job_id for j in jobs], logs, tail=15)

    last = Path(jobs[-1].stage_dir) / "manifest.json"
    wait_until(last.is_file, 1200, "the slurm chain's evaluation to finish", explain)
    assert local.wait(timeout=900) == 0, (shared_dir / "local.log").read_text()[-3000:]

    here, there = manifests(local_root), manifests(slurm_root)
    assert sorted(here) == sorted(there), "both runs must plan the same stage folders"
    assert len(here) == len(jobs)
    for folder in here:
        a, b = here[folder]["metrics"], there[folder]["metrics"]
        if folder.split("-")[0] in TRAINING:
            assert a["steps"] == b["steps"] > 0
            assert a["last_loss"] == pytest.approx(b["last_loss"], rel=1e-5, abs=1e-6), folder
    a_w, b_w = merged_weights(local_root), merged_weights(slurm_root)
    assert a_w.keys() == b_w.keys() and a_w
    for name in a_w:
        torch.testing.assert_close(a_w[name], b_w[name], atol=1e-6, rtol=1e-5, msg=name)
    (evaluation,) = [f for f in here if f.startswith("eval-")]
    a_sum, b_sum = (flatten(m[evaluation]["metrics"]["summary"]) for m in (here, there))
    assert a_sum.keys() == b_sum.keys() and len(a_sum) > 10
    for key, value in a_sum.items():
        assert b_sum[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert here[evaluation]["metrics"]["synergy_verdict"] == there[evaluation]["metrics"]["synergy_verdict"]
