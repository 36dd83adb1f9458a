"""Run one stage in one process: `python -m hpcadapt.worker SPEC.json`.

`python -m hpcadapt.worker --warm` imports the training stack first and then reads
"PORT SPEC_PATH" from stdin (the rendezvous port and the spec): the local launcher
starts one ahead of time, so the next stage does not wait 4-8 s for torch,
transformers and TRL to import.

Every rank of a stage runs this, locally (hpcadapt/launch/processes.py starts N of them) or
as Slurm tasks (hpcadapt/launch/slurm_job.py), with the torch distributed environment
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) already set. The
stage's recipe is the module its kind names in `hpcadapt/stages/kinds.py`; rank 0 finalizes the folder at the end.

A job that finds its stage already complete returns at once, so requeues and duplicate
submissions are harmless.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import warnings
from pathlib import Path

from hpcadapt import tracking
from hpcadapt.config import import_plugins
from hpcadapt.spec import StageSpec
from hpcadapt.stagedir import finalize, is_complete, verify_inputs
from hpcadapt.stages import kinds
from hpcadapt.stop_flag import StagePreempted, request_stop  # noqa: F401  (the job protocol: slurm_job calls them)


def run_stage(spec_path: str | Path) -> None:
    # torch.distributed's deprecation notices fire on every ZeRO-3 collective.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    spec = StageSpec.read(spec_path)
    if is_complete(Path(spec.stage_dir)):
        print(f"hpcadapt: stage {spec.name} is already complete: {spec.stage_dir}", flush=True)
        return
    verify_inputs(spec)  # finished stage folders it reads match their manifests, file by file
    Path(spec.staging_dir).mkdir(parents=True, exist_ok=True)
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    import_plugins(spec.plugins)
    recipe = importlib.import_module(kinds.get(spec.kind).recipe)
    started = time.time()
    metrics = recipe.run(spec)
    if int(os.environ.get("RANK", 0)) == 0:
        metrics = {**(metrics or {}), "wall_s": round(time.time() - started, 2)}
        final = finalize(spec, metrics)
        tracking.close_run(spec, metrics)
        print(f"stage {spec.name} complete: {final}", flush=True)  # the log's; the launcher prints its own


def warm_up() -> None:
    """Import what every training stage needs (not DeepSpeed: `training.setup` chooses its
    accelerator before the first import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (every training stage plots its loss)
    import torch  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401  (transformers, datasets and the Trainer with it)

    from hpcadapt import datamix, training  # noqa: F401


def user_errors() -> tuple[type[Exception], ...]:
    """Errors a user can act on, from any stage: hpcadapt's own (the evaluation's among them) and
    the merger's, which imports nothing from hpcadapt. They end the stage with exit code 2 and
    one paragraph; anything else is a bug and keeps its traceback."""
    from hpcadapt_merge.checkpoint import CheckpointError
    from hpcadapt_merge.config import ConfigError as MergeConfigError

    from hpcadapt.errors import HpcadaptError

    return HpcadaptError, MergeConfigError, CheckpointError


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hpcadapt.worker SPEC.json | --warm (then 'PORT SPEC_PATH' on stdin)")
    spec_path = sys.argv[1]
    if spec_path == "--warm":
        warm_up()
        port, _, spec_path = sys.stdin.readline().strip().partition(" ")
        if not spec_path:  # the launcher did not need this worker after all
            return
        os.environ["MASTER_PORT"] = port
    try:
        run_stage(spec_path)
    except user_errors() as e:
        print(f"\nhpcadapt: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except StagePreempted as e:
        print(f"hpcadapt: {e}", file=sys.stderr, flush=True)
        sys.exit(3)
    except Exception as e:  # the filesystem refused a write (full, quota, read-only): one paragraph
        from hpcadapt.errors import write_failure

        why = write_failure(e)
        if why is None:
            raise
        print(f"\nhpcadapt: error: {getattr(e, 'filename', None) or 'a file'}: {why}. The stage is not "
              f"marked complete; its sealed checkpoints stay and the next run resumes from the newest. Free space "
              f"and run the same command again.", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
