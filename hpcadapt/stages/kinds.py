"""The table of stage kinds: one entry per kind, asked by every other part of hpcadapt.

An entry says which recipe runs the kind, whether it trains on all ranks, which fields
its data rows need, whether it formats conversations with a chat template, and which
kind-specific settings of `stages.NAME` it reads (with their defaults). Validation,
planning (what enters a stage's hash), data checks, the worker and the launchers all
read it here. A setting a kind does not read is refused by name rather than silently
ignored, and does not enter the stage hash.

Adding a kind is one recipe module (`run(spec) -> metrics`), one YAML in conf/stage/ and
one `register(StageKind(...))`, here for built-in kinds or in a module listed in the
config's `plugins` for a kind of one's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

REQUIRED = object()  # a setting the kind reads and the user must give

# StageConfig fields that only some kinds read; every other field is common to all training kinds.
KIND_SPECIFIC_SETTINGS = ("packing", "assistant_only_loss", "beta", "loss_type", "max_prompt_length")

TEXT = ("text",)
CONVERSATION = ("messages",)
PREFERENCE = ("prompt", "chosen", "rejected")  # each a string, or a list of {"role", "content"}


@dataclass(frozen=True)
class StageKind:
    name: str
    recipe: str  # module providing run(spec) -> metrics
    trains: bool  # runs on every rank of the training world, with a data mix and batch arithmetic
    data_fields: tuple[str, ...] = ()
    chat: bool = False  # renders conversations through the model's chat template
    reads: Mapping[str, Any] = field(default_factory=dict)  # kind-specific setting -> default (or REQUIRED)
    one_task: bool = False  # one process, with its own resources in the cluster config (merge, eval)
    from_scratch: bool = False  # builds a model from nothing (no input model)


KINDS: dict[str, StageKind] = {}


def register(kind: StageKind) -> StageKind:
    unknown = [s for s in kind.reads if s not in KIND_SPECIFIC_SETTINGS]
    if unknown:
        raise ValueError(f"stage kind {kind.name!r} reads {unknown}, which are not kind-specific settings "
                         f"({', '.join(KIND_SPECIFIC_SETTINGS)}); use `extra` for anything else")
    KINDS[kind.name] = kind
    return kind


def get(name: str) -> StageKind:
    from hpcadapt.config import ConfigError

    if name not in KINDS:
        raise ConfigError(f"stage kind {name!r} is unknown; known kinds: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def names(predicate=lambda kind: True) -> tuple[str, ...]:
    return tuple(name for name, kind in KINDS.items() if predicate(kind))


for _kind in (
    StageKind("tiny_init", "hpcadapt.stages.tiny_init", trains=False, data_fields=TEXT, from_scratch=True),
    StageKind("cpt", "hpcadapt.stages.cpt", trains=True, data_fields=TEXT, reads={"packing": True}),
    StageKind("sft", "hpcadapt.stages.sft", trains=True, data_fields=CONVERSATION, chat=True,
              reads={"packing": False, "assistant_only_loss": True}),
    StageKind("dpo", "hpcadapt.stages.dpo", trains=True, data_fields=PREFERENCE, chat=True,
              reads={"beta": REQUIRED, "loss_type": "sigmoid"}),
    StageKind("orpo", "hpcadapt.stages.orpo", trains=True, data_fields=PREFERENCE, chat=True,
              reads={"beta": REQUIRED, "max_prompt_length": None}),
    StageKind("kto", "hpcadapt.stages.kto", trains=True, data_fields=PREFERENCE, chat=True,
              reads={"beta": REQUIRED}),
    StageKind("simpo", "hpcadapt.stages.simpo", trains=True, data_fields=PREFERENCE, chat=True,
              reads={"beta": REQUIRED, "max_prompt_length": None}),
    StageKind("merge", "hpcadapt.stages.merge", trains=False, one_task=True),
    StageKind("eval", "hpcadapt.stages.evaluate", trains=False, one_task=True),
):
    register(_kind)
