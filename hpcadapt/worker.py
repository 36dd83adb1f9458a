"""Run one stage in one process: `python -m hpcadapt.worker SPEC.json`.

`python -m hpcadapt.worker --warm` imports the training stack first and then reads
"PORT SPEC_PATH" from stdin (the rendezvous port and the spec): the local launcher
starts one ahead of time, so the next stage does not wait 4-8 s for torch,
transformers and TRL to import.

Every rank of a stage runs this, locally (hpcadapt/launch/local.py starts N of them) or
as Slurm tasks (hpcadapt/launch/slurm_job.py), with the torch distributed environment
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) already set. The
stage's recipe is `hpcadapt/stages/<kind>.py`; rank 0 finalizes the folder at the end.

A job that finds its stage already complete returns at once, so requeues and duplicate
submissions are harmless.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

from hpcadapt import tracking
from hpcadapt.stop_flag import StagePreempted, request_stop  # noqa: F401  (the job protocol: slurm_job calls them)
from hpcadapt.stagedir import finalize, is_complete

RECIPES = {
    "tiny_init": "tiny_init",
    "cpt": "cpt",
    "sft": "sft",
    "dpo": "dpo",
    "orpo": "orpo",
    "kto": "kto",
    "simpo": "simpo",
    "merge": "merge",
    "eval": "evaluate",
}


def run_stage(spec_path: str | Path) -> None:
    # torch.distributed's deprecation notices fire on every ZeRO-3 collective.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    spec = json.loads(Path(spec_path).read_text())
    if is_complete(Path(spec["stage_dir"])):
        print(f"hpcadapt: stage {spec['name']} is already complete: {spec['stage_dir']}", flush=True)
        return
    Path(spec["staging_dir"]).mkdir(parents=True, exist_ok=True)
    recipe = importlib.import_module(f"hpcadapt.stages.{RECIPES[spec['kind']]}")
    started = time.time()
    metrics = recipe.run(spec)
    if int(os.environ.get("RANK", 0)) == 0:
        metrics = {**(metrics or {}), "wall_s": round(time.time() - started, 2)}
        final = finalize(spec, metrics)
        tracking.close_run(spec)
        print(f"hpcadapt: stage {spec['name']} complete: {final}", flush=True)


def warm_up() -> None:
    """Import what every training stage needs (not DeepSpeed: `training.setup` chooses its
    accelerator before the first import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (every training stage plots its loss)
    import torch  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401  (transformers, datasets and the Trainer with it)

    from hpcadapt import datamix, training  # noqa: F401


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hpcadapt.worker SPEC.json | --warm (then 'PORT SPEC_PATH' on stdin)")
    from hpcadapt.errors import HpcadaptError

    spec_path = sys.argv[1]
    if spec_path == "--warm":
        warm_up()
        port, _, spec_path = sys.stdin.readline().strip().partition(" ")
        if not spec_path:  # the launcher did not need this worker after all
            return
        os.environ["MASTER_PORT"] = port
    try:
        run_stage(spec_path)
    except HpcadaptError as e:
        print(f"\nhpcadapt: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except StagePreempted as e:
        print(f"hpcadapt: {e}", file=sys.stderr, flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
