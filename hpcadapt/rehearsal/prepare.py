"""Build what a rehearsal (`scale=rehearsal`) runs on, before planning hashes it.

`conf/scale/rehearsal.yaml` points `model.base` / `model.instruct` at
`<output_root>/rehearsal/models/<family>/{base,instruct}` and `data_root` at
`<output_root>/rehearsal/data`. This step makes those paths real: the stand-in models of
`model.family` (hpcadapt/rehearsal/standins.py; the folder is a link to the build, whose
name hashes what built it) and a stand-in for every dataset file of the experiment's
mixes (hpcadapt/rehearsal/data.py). Model paths a user set elsewhere are left alone.
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
    base, instruct = Path(cfg.model.base).expanduser(), Path(cfg.model.instruct).expanduser()
    if base.name != "base" or instruct != base.with_name("instruct"):
        return  # the user chose model folders of their own
    from hpcadapt.rehearsal.standins import FAMILIES, StandinShape, build_standins

    if cfg.model.family not in FAMILIES:
        raise ConfigError(f"model.family is {cfg.model.family!r}; a rehearsal builds stand-ins of one of "
                          f"{', '.join(FAMILIES)}")
    scale = cfg.scale
    shape = StandinShape(hidden_size=scale.standin_hidden_size, intermediate_size=2 * scale.standin_hidden_size,
                         num_hidden_layers=scale.standin_layers)
    link = base.parent
    pair = build_standins(cfg.model.family, link.parent, shape)
    point_link(link, pair.base.parent)


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
