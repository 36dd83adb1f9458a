"""A Hydra multirun on Slurm: every point planned into one graph and submitted at once.

hydra-submitit-launcher would run each sweep point as one job and keep a login-node
process waiting for all of them; multi-node stages that run for hours make that a poor
fit. Instead each point's config is collected, and when the multirun ends the points go
through the preparation every launcher shares (hpcadapt/launch/prepare.py) as pipelines
of one graph, which hpcadapt/launch/slurm_submit.py submits: a stage that is identical in
all points once, differing ones side by side (as one array where they have the same kind
and the same input jobs), each after exactly the jobs that make its inputs.

`SweepToArrays` is a Hydra callback (`hydra.callbacks` in conf/config.yaml).
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback


class SweepToArrays(Callback):
    """Collect each multirun job's config; prepare and submit all of them at the end.

    The task function only validates (never submits) a point when `in_multirun()` and cluster=slurm.
    """

    def __init__(self) -> None:
        super().__init__()
        self.configs: list[Any] = []

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        completed = getattr(job_return, "status", None) is not None and job_return.status.name == "COMPLETED"
        if config.cluster.kind == "slurm" and completed:
            self.configs.append(config)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> list[Any]:
        if not self.configs:
            return []
        from hpcadapt.errors import HpcadaptError
        from hpcadapt.launch.prepare import prepare
        from hpcadapt.launch.slurm_submit import submit_graph

        try:
            return submit_graph(prepare(self.configs, f"sweep-{self.configs[0].pipeline.name}"))
        except HpcadaptError as e:
            import sys

            print(f"\nhpcadapt: error: {e}", file=sys.stderr)
            sys.exit(2)


def in_multirun() -> bool:
    """True inside a Hydra multirun job (the callback then does the submitting)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False
