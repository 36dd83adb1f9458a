"""W&B runs: one group per pipeline run, one job type per stage, stable ids for requeues.

The run is opened by us (on rank 0) before the Trainer exists, so its config is the
resolved hpcadapt config rather than the Trainer's arguments; the Trainer's W&B callback
then logs into this same run. The run id is derived from the stage hash and the stage
folder's location, so a requeued Slurm job continues the run it started while the same
settings run under another output root get a run of their own. Without an API key runs
are written offline (`wandb sync` uploads them later); nothing here ever writes a key
anywhere.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from hpcadapt.spec import StageSpec

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)


def scrub(obj: Any) -> Any:
    """Drop values whose key looks like a secret, at any depth."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if SECRET_KEY.search(str(k)) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def resolve_mode(settings: dict[str, Any]) -> str:
    if not settings.get("enabled", True):
        return "disabled"
    if settings.get("mode"):
        return settings["mode"]
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def run_id(spec: StageSpec) -> str:
    """Stable across requeues of one stage folder, distinct for every other folder.

    The stage hash alone is not enough: two pipelines with the same settings under
    different output roots (a local run and its Slurm twin, a reference run) would share
    it, and W&B refuses a second live run with an id already in use.
    """
    where = hashlib.sha256(str(Path(spec.stage_dir).resolve()).encode()).hexdigest()[:8]
    return f"{spec.name}-{spec.hash[:16]}-{where}"


def start_run(spec: StageSpec, job_type: str | None = None):
    """Open (or resume) this stage's run on rank 0; returns None where W&B is off."""
    settings = spec.wandb
    mode = resolve_mode(settings)
    if mode == "disabled" or int(os.environ.get("RANK", 0)) != 0:
        return None
    # A wandb-core service address inherited from the launching process (a notebook or
    # test runner that used W&B; sbatch exports the whole environment) would make this
    # stage a client of that process: gone when it exits, unreachable from another node,
    # and shared with every other stage it launched. Each stage starts its own.
    os.environ.pop("WANDB_SERVICE", None)
    import wandb

    root = Path(spec.stage_dir).parent.parent  # output_root: keeps wandb/ out of the stage folder
    os.environ.setdefault("WANDB_LOG_MODEL", "false")
    return wandb.init(
        project=settings["project"],
        entity=settings.get("entity"),
        group=settings["group"],
        job_type=job_type or spec.kind,
        name=f"{spec.name}-{spec.hash[:8]}",
        id=run_id(spec),
        resume="allow",
        mode=mode,
        dir=str(root),
        tags=list(settings.get("tags", [])),
        config=scrub({"stage": spec.name, "settings": spec.settings, "inputs": spec.inputs,
                      "hpcadapt": settings.get("config", {})}),
    )


def close_run(spec: StageSpec) -> None:
    """Log the finished stage folder as a reference artifact (no upload of the weights), then finish.

    Parent stages logged the same way are marked as used, so W&B's lineage graph shows
    the chain, including both parents of a merge. Called after the folder is final.
    """
    import sys

    wandb = sys.modules.get("wandb")
    run = wandb.run if wandb is not None else None
    if run is None:
        return
    parents = [spec.input_model, spec.base_model, spec.other_model]
    for parent in [p for p in parents if p and Path(p, "manifest.json").is_file()]:
        try:
            run.use_artifact(f"{Path(parent).name}:latest")
        except Exception:  # noqa: BLE001 - the parent was not logged (W&B off then, or another project)
            pass
    art = wandb.Artifact(Path(spec.stage_dir).name, type="model", metadata={"kind": spec.kind})
    art.add_reference(f"file://{spec.stage_dir}", checksum=False)
    run.log_artifact(art)
    run.finish()
