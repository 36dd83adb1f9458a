"""Turn a composed config into a pipeline plan: which stages run, in which folders, fed by what.

Each stage's folder is named by a hash of what determines its result: its kind and the
settings that kind reads, the identities of its input models (for a model this pipeline
produced, that model's own stage hash) and the content of its data (hpcadapt/identity.py).
Re-running an experiment therefore skips finished stages, changing one stage's settings
re-runs it and everything downstream, and two experiments that share a prefix share its
stages (hpcadapt/graph.py plans several pipelines as one graph).

How a stage runs (cluster, DeepSpeed stage, process count, attention kernel) is
deliberately not part of the hash: a CPT stage finished locally is not redone on Slurm.
Runs with a fixed global batch are the same optimisation at any world size, up to
floating-point order.

This module must not import torch: it runs on Slurm login nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hpcadapt import hub
from hpcadapt.atomic import write_json_atomic
from hpcadapt.config import ConfigError, world_size
from hpcadapt.datamix import check_source, is_local
from hpcadapt.errors import DataError, ModelError
from hpcadapt.grid import Strategy, strategies_of
from hpcadapt.identity import data_identity, model_identity, source_identity, stable_hash
from hpcadapt.spec import StageSpec
from hpcadapt.stagedir import is_complete, staging_dir_for
from hpcadapt.stages import kinds
from hpcadapt.tracking import redact, refuse_secret_settings

PLAN_VERSION = 4  # bump when the meaning of a stage's settings or inputs changes
# Settings that change how a stage runs or reports, not what it produces.
NON_SEMANTIC = ("logging_steps", "save_steps", "checkpoint_every_minutes", "keep_checkpoints")


@dataclass
class StagePlan:
    name: str
    kind: str
    stage_dir: Path
    spec_path: Path
    depends_on: list[str]
    nprocs: int
    done: bool
    spec: StageSpec | None = field(default=None, repr=False)  # None only for hand-made plans (tests)


@dataclass
class PipelinePlan:
    name: str
    run_dir: Path
    stages: list[StagePlan]
    # Models the evaluation compares, label -> stage name or external model reference.
    models: dict[str, str]

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)


@dataclass(frozen=True)
class ModelRef:
    """A model as a stage reads it: a folder or hub id, its identity, the stages that make it."""

    path: str
    identity: str
    depends_on: tuple[str, ...] = ()


class Planner:
    """Adds one pipeline's stages in order; a stage added is a model the next can name as `@name`.

    The pipeline is the config's own, or one strategy of its grid (hpcadapt/grid.py): the
    strategy names the start model, the chain and the merge, and may adjust stage settings.
    """

    def __init__(self, cfg: Any, strategy: Strategy, resolved: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.stages_root = Path(cfg.output_root).expanduser().resolve() / "stages"
        self.stages: dict[str, StagePlan] = {}
        self.revisions: dict[str, str] = {}  # hub model id -> pinned commit, shared by every spec
        self.nprocs = world_size(cfg)
        # Every stage records the resolved config for W&B; resolving it is the slowest part of planning.
        self.wandb = {**to_dict(cfg.wandb), "config": redact(resolved if resolved is not None else to_dict(cfg))}

    def model(self, ref: str, who: str) -> ModelRef:
        cfg = self.cfg
        if ref.startswith("@"):
            name = ref[1:]
            if name not in self.stages:
                raise ModelError(f"{who} refers to {ref}, but no earlier stage is called {name!r}")
            made = self.stages[name]
            return ModelRef(str(made.stage_dir), "stage:" + made.spec.hash, (name,))
        if hub.is_hub_id(ref):
            key = "model.base_revision" if ref == cfg.model.base else "model.instruct_revision"
            if ref not in self.revisions:
                self.revisions[ref] = hub.pin(ref, "model", OmegaConf.select(cfg, key), key)
            return ModelRef(ref, f"hub:{ref}@{self.revisions[ref]}")
        return ModelRef(ref, model_identity(ref))

    def add(self, name: str, kind: str, settings: dict[str, Any], inputs: dict[str, Any],
            depends_on: list[str], **fields: Any) -> StagePlan:
        loading = model_loading(self.cfg)
        semantic = {k: v for k, v in settings.items() if k not in NON_SEMANTIC}
        digest = stable_hash({"v": PLAN_VERSION, "kind": kind, "settings": semantic, "inputs": inputs,
                              "loading": {"dtype": loading["dtype"]}})
        stage_dir = self.stages_root / f"{name}-{digest[:12]}"
        spec = StageSpec(name=name, kind=kind, hash=digest, pipeline=self.strategy.name,
                         stage_dir=str(stage_dir), staging_dir=str(staging_dir_for(stage_dir)), inputs=inputs,
                         settings=settings, model_loading=loading, revisions=self.revisions,
                         wandb=dict(self.wandb), plugins=list(self.cfg.plugins), threads=self.cfg.threads, **fields)
        plan = StagePlan(name=name, kind=kind, stage_dir=stage_dir, spec_path=staging_dir_for(stage_dir) / "spec.json",
                         depends_on=depends_on, nprocs=self.nprocs if kinds.get(kind).trains else 1,
                         done=is_complete(stage_dir), spec=spec)
        self.stages[name] = plan
        return plan


def plan_pipeline(cfg: Any, strategy: Strategy | None = None, resolved: dict[str, Any] | None = None) -> PipelinePlan:
    """Build the plan of the config's pipeline, or of one strategy of its grid. Checks data
    files and local models, so bad input fails here. `resolved` is `cfg` as a dict, when the
    caller plans several strategies of one config."""
    strategy = strategy or strategies_of(cfg)[0]
    planner = Planner(cfg, strategy, resolved)
    plan_prepare_stages(planner)
    models = plan_chain(planner)
    if strategy.merge and strategy.chain:
        models.update(plan_merge(planner, models[strategy.chain[-1]]))
    if cfg.pipeline.evaluate and (cfg.data.benchmark or cfg.data.heldout):
        plan_evaluation(planner, models)
    stages = list(planner.stages.values())
    check_batch_arithmetic([s for s in stages if not s.done], planner.nprocs)
    root = planner.stages_root.parent
    run_dir = root / "runs" / f"{strategy.name}-{stable_hash([s.spec.hash for s in stages])[:8]}"
    for s in stages:  # one W&B group per pipeline run
        s.spec.wandb["group"] = run_dir.name
    return PipelinePlan(name=strategy.name, run_dir=run_dir, stages=stages, models=models)


def plan_prepare_stages(planner: Planner) -> None:
    """Stages that build the models the chain refers to as `@name`; each feeds the next."""
    previous: str | None = None
    for name in planner.cfg.pipeline.prepare:
        scratch = kinds.get(planner.cfg.stages[name].kind).from_scratch
        plan_training(planner, name, None if scratch else f"@{previous}")
        previous = name


def plan_chain(planner: Planner) -> dict[str, str]:
    """The chain from the Base or the Instruct model; returns label -> model for evaluation."""
    cfg, strategy = planner.cfg, planner.strategy
    current = cfg.model.base if strategy.start == "base" else cfg.model.instruct
    models = {strategy.start: current}
    for name in strategy.chain:
        plan_training(planner, name, current)
        current = models[name] = f"@{name}"
    return models


def plan_training(planner: Planner, name: str, from_model: str | None) -> StagePlan:
    cfg = planner.cfg
    stage_cfg = cfg.stages[name]
    kind = kinds.get(stage_cfg.kind)
    settings = stage_settings({**to_dict(stage_cfg), **planner.strategy.overrides.get(name, {})}, kind, cfg.scale)
    refuse_secret_settings(settings, f"stages.{name}")
    sources = mix_sources(cfg, stage_cfg.data, kind) if stage_cfg.data else []
    inputs: dict[str, Any] = {"data": [source_identity(s) for s in sources]}
    fields: dict[str, Any] = {"data_sources": sources, "deepspeed": to_dict(cfg.deepspeed),
                              "speed": to_dict(cfg.speed), "keep_checkpoints": stage_cfg.keep_checkpoints}
    deps: list[str] = []
    if from_model is not None:
        model = planner.model(from_model, f"stage {name!r}")
        inputs["model"], fields["input_model"], deps = model.identity, model.path, list(model.depends_on)
    instruct = cfg.model.instruct
    if kind.chat and (not instruct.startswith("@") or instruct[1:] in planner.stages):
        # A Base model without a chat template borrows the Instruct model's (preflight).
        model = planner.model(instruct, f"stage {name!r}")
        inputs["instruct_model"], fields["instruct_model"] = model.identity, model.path
        deps += [d for d in model.depends_on if d not in deps]
    return planner.add(name, kind.name, settings, inputs, deps, **fields)


def plan_merge(planner: Planner, chain_result: str) -> dict[str, str]:
    """SLERP (or another method) of the chain's result with the Instruct model, the t = 0 end."""
    cfg = planner.cfg
    base = planner.model(cfg.model.instruct, "merge (model.instruct)")
    other = planner.model(chain_result, "merge")
    planner.add("merge", "merge", to_dict(cfg.merge), {"base_model": base.identity, "model": other.identity},
                [*base.depends_on, *other.depends_on], base_model=base.path, other_model=other.path)
    return {"instruct": cfg.model.instruct, "merged": "@merge"}


def plan_evaluation(planner: Planner, models: dict[str, str]) -> None:
    """Every model of the chain on identical questions, and the merge against both its parents."""
    cfg = planner.cfg
    paths, identities, deps = {}, {}, []
    for label, ref in models.items():
        model = planner.model(ref, f"evaluation of {label!r}")
        paths[label], identities[label] = model.path, model.identity
        deps += [d for d in model.depends_on if d not in deps]
    files = [*cfg.data.benchmark, *cfg.data.general_benchmark, *([cfg.data.heldout] if cfg.data.heldout else [])]
    for f in files:
        if not Path(f).expanduser().is_file():
            raise ModelError(f"evaluation file {f} does not exist (data.benchmark / data.heldout)")
    chain = planner.strategy.chain
    synergy = {"merged": "merged", "parents": ["instruct", chain[-1]]} if "merged" in paths else None
    planner.add("eval", "eval", to_dict(cfg.eval), {"models": identities, "files": [data_identity(f) for f in files]},
                deps, models=paths, benchmark=list(cfg.data.benchmark),
                general_benchmark=list(cfg.data.general_benchmark), heldout=cfg.data.heldout, synergy=synergy,
                merge_t=to_dict(cfg.merge)["t"])


def stage_settings(settings: dict[str, Any], kind: kinds.StageKind, scale: Any) -> dict[str, Any]:
    """The settings a stage of `kind` reads: the common ones, its own kind-specific ones with
    their defaults (kinds.py), none of another kind's; capped by `scale` for a rehearsal."""
    out = {k: v for k, v in settings.items() if k not in kinds.KIND_SPECIFIC_SETTINGS}
    if (out.get("peft") or {}).get("method", "none") == "none":
        out.pop("peft", None)  # full-parameter training: adapter settings mean nothing
    for setting, default in kind.reads.items():
        out[setting] = settings.get(setting) if settings.get(setting) is not None else default
    return scaled(out, scale) if kind.trains else out


def scaled(settings: dict[str, Any], scale: Any) -> dict[str, Any]:
    """A training stage's settings under `scale`'s caps (a rehearsal), else unchanged.

    Only sizes and step counts change: a prompt budget shrinks with the sequence length,
    and warmup stays a quarter of the steps at most.
    """
    out = dict(settings)
    if scale.max_steps is not None:
        out["max_steps"] = scale.max_steps if out["max_steps"] <= 0 else min(out["max_steps"], scale.max_steps)
        out["warmup_steps"] = min(out["warmup_steps"], max(1, scale.max_steps // 4)) if out["warmup_steps"] else 0
    if scale.max_length is not None and scale.max_length < out["max_length"]:
        if out.get("max_prompt_length"):
            out["max_prompt_length"] = out["max_prompt_length"] * scale.max_length // out["max_length"]
        out["max_length"] = scale.max_length
    for key in ("global_batch_size", "per_device_train_batch_size"):
        if getattr(scale, key) is not None:
            out[key] = min(out[key], getattr(scale, key))
    return out


def check_batch_arithmetic(stages: list[StagePlan], nprocs: int) -> None:
    """Gradient accumulation must be whole for every stage that will run on `nprocs` processes.

    Checked at planning, not composition: finished stages (perhaps trained on another
    world size) are not held to it, and a bad stage fails before any job starts.
    """
    for stage in stages:
        if not kinds.get(stage.kind).trains:
            continue
        s = stage.spec.settings
        if s["global_batch_size"] % (s["per_device_train_batch_size"] * nprocs):
            raise ConfigError(
                f"stages.{stage.name}.global_batch_size ({s['global_batch_size']}) is not a multiple of "
                f"per_device_train_batch_size ({s['per_device_train_batch_size']}) x world size ({nprocs} "
                f"processes): gradient accumulation must be a whole number"
            )


def mix_sources(cfg: Any, mix_name: str, kind: kinds.StageKind) -> list[dict[str, Any]]:
    """The mix's sources with absolute paths and pinned hub revisions, each checked against the stage's needs."""
    sources = []
    for i, src in enumerate(cfg.data.mixes[mix_name].sources):
        key = f"data.mixes.{mix_name}.sources[{i}]"
        src = to_dict(src)
        if is_local(src["path"]):
            src["path"] = str(Path(src["path"]).expanduser().resolve())
            if src.get("hub") and not Path(src["path"]).exists():
                origin = src["hub"]
                raise DataError(
                    f"{key}: data file {src['path']} does not exist. It comes from the hub dataset {origin['id']} "
                    f"(split {origin['split']}): fetch it with `python -m hpcadapt.data fetch <the same overrides>` "
                    f"on a machine with network, or set data_root (HPCADAPT_DATA) to where your copy lies."
                )
        else:
            src["revision"] = hub.pin(src["path"], "dataset", src.get("revision"), f"{key}.revision")
        src["rows"] = check_source(src["path"], kind.name, key, src.get("revision"))
        src["seed"] = cfg.data.mixes[mix_name].seed
        sources.append(src)
    return sources


def write_specs(plan: PipelinePlan) -> None:
    """Write each unfinished stage's spec into its staging folder, and the run's plan file."""
    for stage in plan.stages:
        if stage.done:
            continue
        stage.spec_path.parent.mkdir(parents=True, exist_ok=True)
        stage.spec.write(stage.spec_path)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan.run_dir / "plan.json", {
        "pipeline": plan.name,
        "models": plan.models,
        "stages": [{"name": s.name, "kind": s.kind, "dir": str(s.stage_dir), "depends_on": s.depends_on,
                    "nprocs": s.nprocs} for s in plan.stages],
    })


def to_dict(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def model_loading(cfg: Any) -> dict[str, Any]:
    m = cfg.model
    return {"dtype": m.dtype, "attn_implementation": m.attn_implementation,
            "trust_remote_code": m.trust_remote_code, "chat_template_file": m.chat_template_file}
