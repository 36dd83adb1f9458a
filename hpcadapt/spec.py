"""The stage spec: everything one stage's processes need, written to `spec.json` in its staging folder.

Planning (on a login node) writes it; the worker (on a compute node) reads it back and
hands it to the stage's recipe. Typed, so the twenty-odd things a recipe may read are
named here once rather than as string keys spread over the recipes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageSpec:
    name: str
    kind: str  # an entry of hpcadapt/stages/kinds.py
    hash: str  # of what decides the result: kind, settings, inputs' identities, dtype
    pipeline: str
    stage_dir: str  # the final folder, which appears only when the stage is complete
    staging_dir: str  # where the stage works, logs and checkpoints until then
    inputs: dict[str, Any]  # the identities that entered the hash
    settings: dict[str, Any]  # the stage's settings (stages.NAME, or the merge / eval config)
    model_loading: dict[str, Any]  # dtype, attention kernel, trust_remote_code, chat_template_file
    revisions: dict[str, str] = field(default_factory=dict)  # hub model id -> pinned commit
    wandb: dict[str, Any] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)  # modules that register kinds of their own
    # Models, as folders or hub ids.
    input_model: str | None = None  # what a training stage starts from
    instruct_model: str | None = None  # whose chat template a Base model borrows
    base_model: str | None = None  # merge: the t = 0 end (the Instruct model, as in the paper)
    other_model: str | None = None  # merge: the chain's result
    models: dict[str, str] = field(default_factory=dict)  # eval: label -> model
    # Data.
    data_sources: list[dict[str, Any]] = field(default_factory=list)
    benchmark: list[str] = field(default_factory=list)
    general_benchmark: list[str] = field(default_factory=list)
    heldout: str | None = None
    synergy: dict[str, Any] | None = None  # eval: {"merged": label, "parents": [label, label]}
    merge_t: Any = None  # eval: the merge's t schedule, for its plot
    # How training runs.
    deepspeed: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    speed: dict[str, Any] = field(default_factory=dict)  # liger, compile, tf32 (hpcadapt/config.py SpeedConfig)
    keep_checkpoints: bool = False
    threads: int | None = None  # torch threads of the stage's processes (fixed: the same numbers on any machine)

    def write(self, path: Path) -> None:
        from hpcadapt.atomic import write_json_atomic

        write_json_atomic(path, asdict(self))

    @classmethod
    def read(cls, path: str | Path) -> StageSpec:
        return cls(**json.loads(Path(path).read_text()))
