"""Stage folders: where a stage works, how it is declared finished, and how it is found.

A stage writes everything into a hidden staging folder next to its final folder and
renames it into place as its very last act. The rename is atomic on one filesystem, so
a folder under its final name is always complete, and a crash (or a preempted Slurm
job) leaves only a staging folder, which is also where the next attempt resumes from.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcadapt.atomic import write_json_atomic

if TYPE_CHECKING:
    from hpcadapt.spec import StageSpec

MANIFEST = "manifest.json"


def staging_dir_for(stage_dir: Path) -> Path:
    return stage_dir.parent / f".staging-{stage_dir.name}"


def is_complete(stage_dir: Path) -> bool:
    manifest = stage_dir / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return bool(json.loads(manifest.read_text()).get("complete"))
    except json.JSONDecodeError:
        return False


def read_manifest(stage_dir: Path) -> dict[str, Any]:
    return json.loads((stage_dir / MANIFEST).read_text())


def library_versions() -> dict[str, str]:
    """Versions of what shaped the result, recorded in every manifest."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("hpcadapt", "torch", "transformers", "trl", "datasets", "accelerate", "deepspeed", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def finalize(spec: StageSpec, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write the manifest into the staging folder and move it to its final name."""
    staging = Path(spec.staging_dir)
    final = Path(spec.stage_dir)
    if not spec.keep_checkpoints:
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    # The Trainer pickles its arguments next to the weights; a finished model folder
    # should hold nothing that has to be unpickled (spec.json records the settings).
    (staging / "training_args.bin").unlink(missing_ok=True)
    models = {k: getattr(spec, k) for k in ("input_model", "base_model", "other_model") if getattr(spec, k)}
    manifest = {
        "name": spec.name,
        "kind": spec.kind,
        "hash": spec.hash,
        "pipeline": spec.pipeline,
        "inputs": spec.inputs,
        # Where the inputs were read from this time (not part of the hash).
        "sources": {"data": [src["path"] for src in spec.data_sources],
                    "models": models | spec.models,
                    "files": [*spec.benchmark, *([spec.heldout] if spec.heldout else [])]},
        "settings": spec.settings,
        "versions": library_versions(),
        "metrics": metrics,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": True,
        **(extra or {}),
    }
    write_json_atomic(staging / MANIFEST, manifest)
    if final.exists():  # an identical stage finished meanwhile (e.g. a duplicate job)
        if is_complete(final):
            shutil.rmtree(staging)
            return final
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


@contextmanager
def stage_lock(stage_dir: Path) -> Iterator[None]:
    """Hold a stage folder's lock while its stage runs; if another run holds it, say who and wait.

    An advisory lock on a small file beside the folder: released by the kernel when the
    holder exits or dies, so a crash never leaves a lock that blocks the next run.
    """
    lock_file = stage_dir.parent / f".lock-{stage_dir.name}"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            print(f"hpcadapt: waiting for stage {stage_dir.name}: {holder}", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"held by pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)

