"""W&B run identity: one run per stage folder, resumable, never shared between pipelines."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from hpcadapt.spec import StageSpec
from hpcadapt.tracking import run_id


def spec_for(stage_dir: Path) -> StageSpec:
    return StageSpec(
        name="cpt", kind="cpt", hash="ab" * 32, pipeline="p", stage_dir=str(stage_dir), staging_dir=str(stage_dir),
        settings={"lr": 1e-5}, inputs={}, model_loading={},
        wandb={"enabled": True, "mode": "offline", "project": "hpcadapt-test", "group": "run-1", "tags": []},
    )


def test_run_id_is_stable_per_folder_and_distinct_between_output_roots(tmp_path):
    here, there = tmp_path / "a/stages/cpt-abab", tmp_path / "b/stages/cpt-abab"
    assert run_id(spec_for(here)) == run_id(spec_for(here)), "a requeued job must continue its run"
    assert run_id(spec_for(here)) != run_id(spec_for(there)), "same settings elsewhere is another run"
    assert run_id(spec_for(here)).startswith("cpt-abababababababab")


OPEN_RUN = """
import json, os, sys
from hpcadapt.spec import StageSpec
from hpcadapt.tracking import start_run
spec = StageSpec(**json.loads(sys.argv[1]))
run = start_run(spec)
print("RUN", run.id, os.environ.get("WANDB_SERVICE", "") != sys.argv[2])
run.finish()
"""


def test_stage_opens_its_own_wandb_service_despite_an_inherited_address(tmp_path):
    """sbatch exports the submitting shell's environment; a WANDB_SERVICE address there
    belongs to a process that may be gone (here: never existed). The stage must not use it."""
    stale = "3-999999-unix-/nonexistent/wandb-core.sock"
    stage_dir = tmp_path / "out/stages/cpt-abab"
    env = {**os.environ, "WANDB_SERVICE": stale, "RANK": "0"}
    out = subprocess.run([sys.executable, "-c", OPEN_RUN, json.dumps(asdict(spec_for(stage_dir))), stale],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"RUN {run_id(spec_for(stage_dir))} True" in out.stdout
    assert list((tmp_path / "out/wandb").glob("offline-run-*/run-*.wandb")), "offline run written under output_root"
