"""Models and datasets named by hub id: pinned to a commit before planning, read from the cache.

A hub id alone names whatever the repository holds today. If a stage's hash covered only
the id, a dataset or model updated upstream would silently reuse stages trained on the
old one. So every hub reference is resolved to a commit sha at planning (the sha the
user gave; else what the branch points to in the local Hugging Face cache; else, when
the hub is reachable, what it points to there), and the sha enters the stage hash, the
spec and the manifest. Stages then read that commit, from the cache when offline.

Planning runs on login nodes: nothing here imports torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpcadapt.config import ConfigError

COMMIT = re.compile(r"^[0-9a-f]{40}$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(ref: str) -> bool:
    """`org/name` that is not a path on this machine."""
    return bool(HUB_ID.match(ref)) and not Path(ref).expanduser().exists()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def cache_root() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it from the environment."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return Path(os.environ.get("HF_HUB_CACHE") or home / "hub")


def cache_folder(repo_id: str, repo_type: str) -> Path:
    """Where huggingface_hub keeps a repository (`<cache>/models--org--name`)."""
    return cache_root() / f"{repo_type}s--{repo_id.replace('/', '--')}"


def pin(repo_id: str, repo_type: str, requested: str | None, key: str) -> str:
    """The commit sha a hub reference stands for; `key` names the config setting in errors."""
    if requested and COMMIT.match(requested):
        return requested
    branch = requested or "main"
    cached = cache_folder(repo_id, repo_type) / "refs" / branch
    if cached.is_file():
        return cached.read_text().strip()
    if not offline():
        from huggingface_hub import HfApi

        api = HfApi()
        try:
            info = (api.model_info if repo_type == "model" else api.dataset_info)(repo_id, revision=branch)
        except Exception as e:  # noqa: BLE001 - network, auth and not-found errors alike
            raise ConfigError(f"{key}: cannot resolve hub {repo_type} {repo_id}@{branch} to a commit ({e})") from None
        return info.sha
    raise ConfigError(
        f"{key}: hub {repo_type} {repo_id} is not pinned to a commit and {branch!r} is not in the local cache "
        f"({cached.parent.parent}), and the hub is offline (HF_HUB_OFFLINE=1). Set its revision to a commit sha, "
        f"or download it on a machine with network first."
    )


def local_folder(repo_id: str, revision: str, repo_type: str = "model") -> Path:
    """The folder of a pinned hub repository's files (downloaded unless offline)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache_root(),
                                      local_files_only=offline()))
    except Exception as e:  # noqa: BLE001 - huggingface_hub's errors carry no common base
        raise ConfigError(
            f"hub {repo_type} {repo_id}@{revision} is not available here ({type(e).__name__}: {e})"
        ) from None


def local_model(ref: str, revisions: dict[str, str]) -> str:
    """A model folder for a stage's model reference: hub ids become their pinned snapshot.

    The merger and the evaluation read files directly, so they need folders, not ids."""
    return str(local_folder(ref, revisions[ref])) if ref in revisions else ref
