"""Identities: what makes two inputs the same input, without reading gigabytes.

A stage's folder is named by a hash of its settings and its inputs' identities: local
data by content (cached by size and modification time), hub data and models by pinned
commit, finished stages by their own hash, other model folders by their config and the
names, sizes and times of their weights. Location never enters: the same files under
another root are the same input.

No torch here: identities are computed on login nodes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hpcadapt.errors import ModelError
from hpcadapt.stagedir import is_complete, read_manifest


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def source_identity(src: dict[str, Any]) -> dict[str, Any]:
    """What of a source decides a stage's result: its content (or pinned hub commit) and how it is
    drawn, not where the file lies or where it was fetched from."""
    ident = {k: v for k, v in src.items() if k not in ("path", "hub", "revision")}
    ident["identity"] = f"hub:{src['path']}@{src['revision']}" if src.get("revision") else data_identity(src["path"])
    return ident


def data_identity(path: str) -> str:
    """Content hash for local files (cached by size and mtime); the id for hub datasets."""
    p = Path(path).expanduser()
    if not p.exists():
        return f"hub:{path}"
    if p.is_dir():
        return "dir:" + stable_hash(sorted((str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
                                           for f in p.rglob("*") if f.is_file()))
    return "sha256:" + file_sha256(p)


_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(p: Path) -> str:
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def model_identity(ref: str) -> str:
    """Identify a local model folder without reading its weights.

    A finished hpcadapt stage is identified by its hash. Another folder by its config and
    the names, sizes and modification times of its weight files (hashing 15 GB on every
    plan would be too slow). Hub ids are pinned to a commit by `hub.pin` instead.
    """
    p = Path(ref).expanduser()
    if not p.exists():
        raise ModelError(f"model folder {ref} does not exist (nor is it a hub id like org/name)")
    if not p.is_dir():
        raise ModelError(f"model path {ref} is a file; expected a Hugging Face model folder")
    if is_complete(p):
        return "stage:" + read_manifest(p)["hash"]
    weights = sorted(p.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.glob("*.bin")) + sorted(p.glob("*.pt"))
        hint = " It has pickled weights; convert them to safetensors first." if pickled else ""
        raise ModelError(f"model folder {p} has no *.safetensors weights.{hint}")
    if not (p / "config.json").is_file():
        raise ModelError(f"model folder {p} has no config.json")
    return "local:" + stable_hash({
        "config": (p / "config.json").read_text(),
        "weights": [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights],
    })
