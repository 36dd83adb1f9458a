"""Launchers: where a validated config's graph of stages runs.

Every launcher calls the one preparation step (`prepare.py`: inputs, plans, graph, checks)
and then runs or submits what is not done. `cluster.kind` picks one from this table; a new
cluster type (Kubernetes, a cloud batch service) is one module with a `launch(cfg)` function,
registered here or from a plugin (`plugins: [my_site.launcher]` calling `register`), and one
`conf/cluster/*.yaml`. Importing this module imports no launcher.
"""

from __future__ import annotations

import importlib
from typing import Any

# cluster.kind -> "module:function" taking the validated config.
LAUNCHERS: dict[str, str] = {
    "local": "hpcadapt.launch.local:launch",
    "slurm": "hpcadapt.launch.slurm:launch",
}


def register(kind: str, target: str) -> None:
    """Add a launcher: `target` is "module:function"; the function takes the validated config."""
    LAUNCHERS[kind] = target


def launch(cfg: Any) -> None:
    module, function = LAUNCHERS[cfg.cluster.kind].split(":")
    getattr(importlib.import_module(module), function)(cfg)
