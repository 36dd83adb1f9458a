"""The Slurm launcher (hpcadapt/launch/__init__.py): the graph as dependent jobs.

Inside a Hydra multirun each point is only checked here; the sweep's end callback
(slurm_sweep.py) submits all points as one graph.
"""

from __future__ import annotations

from typing import Any


def launch(cfg: Any) -> None:
    from hpcadapt.launch.slurm_sweep import in_multirun

    if in_multirun():
        print(f"hpcadapt: sweep point {cfg.pipeline.name} checked; submitted with the others when the sweep ends")
        return
    from hpcadapt.launch.prepare import graph_name, prepare
    from hpcadapt.launch.slurm_submit import submit_graph

    submit_graph(prepare([cfg], graph_name(cfg)))
