"""Strategy grids: the paper's comparison of training strategies, as pipelines of one graph.

A strategy is named as in the paper: the start model, the stages in order, and SLERP if
the result is merged with the Instruct model (`Instruct-CPT-SFT-ORPO-SLERP`,
`Base-CPT-SFT-SLERP`). The planner plans each as a pipeline of the grid's config, with
`grid.from_base` / `grid.from_instruct` applied to the stages the paper sets differently
by start model. Planned together (hpcadapt/graph.py), the strategies share every stage
they have in common. A config without a grid is the one strategy its `pipeline` names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from hpcadapt.config import ConfigError

_SHORTHAND = re.compile(r"^(base|instruct)((?:-[a-z0-9_]+)*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Strategy:
    name: str
    start: str  # base | instruct
    chain: tuple[str, ...]  # stage names, in order
    merge: bool
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)  # stage -> settings

    @property
    def training_stages(self) -> int:
        return len(self.chain)


def parse_strategy(entry: Any, known_stages: list[str]) -> Strategy:
    """`Instruct-CPT-SFT-ORPO-SLERP`, or {name?, start, chain, merge}; stage names are the
    config's `stages` entries, matched without regard to case."""
    if isinstance(entry, str):
        match = _SHORTHAND.match(entry.strip())
        if not match:
            raise ConfigError(f"grid strategy {entry!r}: expected Base|Instruct followed by -STAGE... and an "
                              f"optional -SLERP, e.g. Instruct-CPT-SFT-ORPO-SLERP")
        parts = [p for p in match.group(2).split("-") if p]
        merge = bool(parts) and parts[-1].lower() == "slerp"
        chain = [p.lower() for p in (parts[:-1] if merge else parts)]
        start, name = match.group(1).lower(), entry.strip()
    else:
        entry = dict(entry)
        start, chain, merge = entry.get("start", "instruct"), list(entry.get("chain", [])), bool(entry.get("merge"))
        name = entry.get("name") or "-".join([start.capitalize(), *(c.upper() for c in chain), *(["SLERP"] * merge)])
    by_lower = {s.lower(): s for s in known_stages}
    missing = [c for c in chain if c.lower() not in by_lower]
    if missing:
        raise ConfigError(f"grid strategy {name!r} needs stage(s) {missing}, which the config does not define "
                          f"(stages: {', '.join(known_stages)}); add e.g. `/stage@stages.{missing[0]}: "
                          f"{missing[0]}` to the grid's defaults")
    if start not in ("base", "instruct"):
        raise ConfigError(f"grid strategy {name!r}: start must be base or instruct, got {start!r}")
    if merge and not chain:
        raise ConfigError(f"grid strategy {name!r} merges nothing: SLERP needs at least one stage before it")
    return Strategy(name, start, tuple(by_lower[c.lower()] for c in chain), merge)


def strategies_of(cfg: Any) -> list[Strategy]:
    """The config's grid of strategies, or the one pipeline it configures."""
    if not cfg.grid.strategies:
        pipe = cfg.pipeline
        return [Strategy(pipe.name, pipe.start, tuple(pipe.chain), pipe.merge)]
    known = list(cfg.stages)
    found = []
    for entry in OmegaConf.to_container(cfg.grid.strategies):
        strategy = parse_strategy(entry, known)
        overrides = cfg.grid.from_base if strategy.start == "base" else cfg.grid.from_instruct
        found.append(Strategy(strategy.name, strategy.start, strategy.chain, strategy.merge,
                              OmegaConf.to_container(overrides, resolve=True)))
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        raise ConfigError(f"grid.strategies names a strategy twice: {names}")
    return found


def check_overrides(cfg: Any) -> None:
    """grid.from_base / from_instruct name stages and settings that exist (checked at validation)."""
    for start in ("base", "instruct"):
        for stage, settings in cfg.grid[f"from_{start}"].items():
            if stage not in cfg.stages:
                raise ConfigError(f"grid.from_{start}.{stage}: no stage called {stage!r}")
            try:
                OmegaConf.merge(cfg.stages[stage], settings)
            except Exception as e:  # noqa: BLE001 - OmegaConf's validation errors name the key
                raise ConfigError(f"grid.from_{start}.{stage}: {e}") from None
