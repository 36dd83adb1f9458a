"""Stage folders: where a stage works, how it is declared finished, and how it is found.

A stage writes everything into a hidden staging folder next to its final folder and
renames it into place as its very last act. The rename is atomic on one filesystem, so
a folder under its final name is always complete, and a crash (or a preempted Slurm
job) leaves only a staging folder, which is also where the next attempt resumes from.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so readers see the old file or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


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


def finalize(spec: dict[str, Any], metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write the manifest into the staging folder and move it to its final name."""
    staging = Path(spec["staging_dir"])
    final = Path(spec["stage_dir"])
    if not spec.get("keep_checkpoints"):
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    # The Trainer pickles its arguments next to the weights; a finished model folder
    # should hold nothing that has to be unpickled (spec.json records the settings).
    (staging / "training_args.bin").unlink(missing_ok=True)
    manifest = {
        "name": spec["name"],
        "kind": spec["kind"],
        "hash": spec["hash"],
        "pipeline": spec.get("pipeline"),
        "inputs": spec.get("inputs", {}),
        # Where the inputs were read from this time (not part of the hash).
        "sources": {"data": [src["path"] for src in spec.get("data_sources", [])],
                    "models": {k: spec[k] for k in ("input_model", "base_model", "other_model") if k in spec}
                    | spec.get("models", {}),
                    "files": [*spec.get("benchmark", []), *([spec["heldout"]] if spec.get("heldout") else [])]},
        "settings": spec.get("settings", {}),
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
