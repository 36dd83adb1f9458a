"""Build what a rehearsal (`scale=rehearsal`) runs on, before planning hashes it.

The stand-in models of `model.family` (hpcadapt/rehearsal/standins.py) are built under
`<output_root>/rehearsal/models/<family>`, a link to the build (whose name hashes what
built it), and `model.base` / `model.instruct` are pointed at its `base` / `instruct`
folders. `conf/scale/rehearsal.yaml` points `data_root` at `<output_root>/rehearsal/data`,
where a stand-in of every dataset file of the experiment's mixes is written
(hpcadapt/rehearsal/data.py). A model without a family (the tiny demo builds its own)
is kept as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hpcadapt.config import ConfigError


def prepare_rehearsal(cfg: Any) -> None:
    from hpcadapt.rehearsal.data import write_standin_data

    build_standin_models(cfg)
    write_standin_data(cfg)


def build_standin_models(cfg: Any) -> None:
    if cfg.model.family is None:
        return
    from hpcadapt.rehearsal.standins import FAMILIES, StandinShape, build_standins

    if cfg.model.family not in FAMILIES:
        raise ConfigError(f"model.family is {cfg.model.family!r}; a rehearsal builds stand-ins of one of "
                          f"{', '.join(FAMILIES)}")
    scale = cfg.scale
    shape = StandinShape(hidden_size=scale.standin_hidden_size, intermediate_size=2 * scale.standin_hidden_size,
                         num_hidden_layers=scale.standin_layers)
    link = Path(cfg.output_root).expanduser().resolve() / "rehearsal" / "models" / cfg.model.family
    pair = build_standins(cfg.model.family, link.parent, shape)
    point_link(link, pair.base.parent)
    cfg.model.base, cfg.model.instruct = str(link / "base"), str(link / "instruct")
    cfg.model.base_revision = cfg.model.instruct_revision = None


def point_link(link: Path, target: Path) -> None:
    """Make `link` a relative symlink to `target`, replacing an older link atomically."""
    relative = os.path.relpath(target, link.parent)
    if link.is_symlink() and os.readlink(link) == relative:
        return
    if link.exists() and not link.is_symlink():
        raise ConfigError(f"{link} exists and is not a link to a stand-in build; move it away")
    tmp = link.with_name(f".{link.name}.link{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(relative)
    os.replace(tmp, link)
