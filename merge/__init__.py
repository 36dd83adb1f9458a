"""hpcadapt_merge: a standalone, parallel, resumable merger for safetensors checkpoints.

Importing this package is cheap and pulls in neither torch nor any training library;
the heavy modules load when a merge runs (torch for SLERP, TIES and DARE; never
transformers, trl, deepspeed or hydra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import MergeSummary


def run_merge(config, out_dir, *, workers: int | None = None, force: bool = False, progress: bool = True,
              **options) -> MergeSummary:
    """Merge as described by a mergekit-style dict or YAML path into `out_dir`.

    Extra option: `shard_size` (bytes per output shard). See engine.run_merge.
    """
    from .engine import run_merge as _run

    return _run(config, out_dir, workers=workers, force=force, progress=progress, **options)


def __getattr__(name):
    if name == "MergeSummary":
        from .engine import MergeSummary

        return MergeSummary
    raise AttributeError(name)


__all__ = ["run_merge", "MergeSummary"]
