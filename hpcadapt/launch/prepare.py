"""The preparation every launcher shares: inputs written, pipelines planned as one graph, checks run.

    composed and validated config(s) -> generated inputs -> plans -> one graph -> pre-launch checks

Local runs, Slurm submissions, Hydra sweeps and strategy grids all call `prepare`, so
everything that can be wrong with the input (an unwritable output folder, data files and
rows, model folders and chat templates, the attention kernel where stages will run, batch
arithmetic, a training stage too large for the GPUs' memory) fails here, in seconds, before
any stage starts or any job is queued. The estimates of memory and time per stage
(hpcadapt/estimate.py) are made here too; they set the Slurm time limit of training jobs.
Nothing here imports torch: it runs on login nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hpcadapt import attention
from hpcadapt.errors import HpcadaptError, ModelError
from hpcadapt.estimate import StageEstimate, check_fits, estimate_graph
from hpcadapt.graph import StageGraph, build_graph, describe
from hpcadapt.grid import strategies_of
from hpcadapt.plan import PipelinePlan, plan_pipeline
from hpcadapt.preflight import has_chat_template_files
from hpcadapt.stages import kinds


@dataclass
class Prepared:
    graph: StageGraph
    configs: list[Any]  # the validated configs the graph's pipelines come from (a sweep has several)
    dry_run: bool
    # Training stages to run, by folder: memory and time estimates, and their jobs' Slurm time limit.
    estimates: dict[Path, StageEstimate] = field(default_factory=dict)

    @property
    def time_limits(self) -> dict[Path, int]:
        return {folder: e.time_limit_min for folder, e in self.estimates.items() if e.time_limit_min}

    @property
    def cluster(self) -> Any:
        return self.configs[0].cluster

    @property
    def output_root(self) -> Path:
        return Path(self.configs[0].output_root).expanduser().resolve()


def graph_name(cfg: Any) -> str:
    return cfg.grid.name if cfg.grid.strategies else cfg.pipeline.name


def prepare(configs: list[Any], name: str) -> Prepared:
    """Write generated inputs, plan every pipeline (every strategy of a grid), merge them into
    one graph, run the checks. `configs` are validated configs: one, or a sweep's points."""
    first = configs[0]
    for root in {Path(c.output_root).expanduser().resolve() for c in configs}:
        check_writable(root)
    plans: list[PipelinePlan] = []
    for cfg in configs:
        prepare_data(cfg)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for strategy in strategies_of(cfg):
            plan = plan_pipeline(cfg, strategy, resolved)
            check_models(plan, cfg)
            plans.append(plan)
    graph = build_graph(name, plans)
    if len(plans) > 1:  # a grid or a sweep is one W&B group: its stages, shared ones once
        for stage in graph.ordered:
            stage.plan.spec.wandb["group"] = f"{name}-{graph.identity}"
    estimates = estimate_graph(graph, first)
    check_fits(estimates, first.cluster)  # before anything runs: a stage that cannot fit is refused
    check_environment(graph, first)
    if first.dry_run or first.verbose:
        print(describe(graph), flush=True)
        print(describe_estimates(estimates, first.cluster), flush=True)
    else:
        print(describe(graph).splitlines()[0], flush=True)  # dry_run=true lists every stage
    return Prepared(graph, configs, bool(first.dry_run), estimates)


def describe_estimates(estimates: dict[Path, StageEstimate], cluster: Any) -> str:
    """The dry run's estimates of every training stage to run (hpcadapt/estimate.py)."""
    if not estimates:
        return "hpcadapt: no training stage to run, nothing to estimate"
    memory = (f"checked against cluster.gpu_memory_gb={float(cluster.gpu_memory_gb):g}" if cluster.gpu_memory_gb
              else "not checked: cluster.gpu_memory_gb is not set")
    lines = [f"hpcadapt: estimates per training stage (memory per GPU in GiB, {memory}):"]
    lines += [e.describe(cluster.gpu_memory_gb, cluster.kind == "slurm") for e in estimates.values()]
    return "\n".join(lines)


def check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise HpcadaptError(f"output folder {root} is not writable ({e.strerror}); set output_root=... "
                            f"or HPCADAPT_OUTPUT to a folder you can write") from None


def prepare_data(cfg: Any) -> None:
    """Write generated inputs before planning hashes them: the demo's fictional domain, or a
    rehearsal's stand-ins of the model family and of every dataset (hpcadapt/rehearsal/)."""
    if cfg.scale.standins:
        from hpcadapt.rehearsal.prepare import prepare_rehearsal

        prepare_rehearsal(cfg)
    if cfg.data.generate == "tiny_domain":
        from hpcadapt.demo.domain import generate_domain

        generate_domain(Path(cfg.output_root) / "demo_data")
    elif cfg.data.generate:
        raise HpcadaptError(f"data.generate={cfg.data.generate!r} is unknown; the only generator is 'tiny_domain'")


def check_models(plan: PipelinePlan, cfg: Any) -> None:
    """Local start models must be complete folders with the tokenizer files the chain needs."""
    chat_stage = next((s.name for s in plan.stages if kinds.get(s.kind).chat), None)
    for stage in plan.stages:
        path = stage.spec.input_model
        if not path or stage.done or not Path(path).is_dir() or stage.depends_on:
            continue  # hub ids, and models produced by this pipeline, are checked when loaded
        model_dir = Path(path)
        if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise ModelError(
                f"model folder {model_dir} has no tokenizer files (tokenizer.json / tokenizer_config.json)"
            )
        if chat_stage and not cfg.model.chat_template_file and not has_chat_template_files(model_dir):
            instruct = Path(cfg.model.instruct).expanduser()
            if instruct.is_dir() and has_chat_template_files(instruct):
                continue  # chat stages borrow the Instruct model's template (preflight.ensure_chat_template)
            raise ModelError(
                f"model folder {model_dir} has no chat template, nor has the Instruct model {cfg.model.instruct}, but "
                f"stage {chat_stage!r} formats conversations. hpcadapt never substitutes a generic template: set "
                f"model.chat_template_file to a Jinja file."
            )


def check_environment(graph: StageGraph, cfg: Any) -> None:
    """The interpreter that will run the stages can import what they need (flash-attention above all)."""
    trains = any(kinds.get(s.plan.kind).trains and not s.plan.done for s in graph.ordered)
    if cfg.cluster.kind == "slurm":
        from hpcadapt.launch.job_env import check_job_environment

        check_job_environment(cfg.cluster, cfg.model.attn_implementation, trains)
    elif trains:
        attention.check_importable_here(cfg.model.attn_implementation)
