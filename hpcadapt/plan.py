"""Turn a composed config into a pipeline plan: which stages run, in which folders, fed by what.

Each stage's folder is named by a hash of what determines its result: its kind and
settings, the identity of its input model (for a model this pipeline produced, that
model's own stage hash) and the content of its data (not where the files lie). Re-running an experiment therefore
skips finished stages, changing one stage's settings re-runs it and everything
downstream, and two experiments that share a prefix share its stages.

How a stage runs (cluster, DeepSpeed stage, process count, attention kernel) is deliberately not part of
the hash: a CPT stage finished locally is not redone on Slurm. Runs with a fixed global
batch are the same optimisation at any world size, up to floating-point order.

This module must not import torch: it runs on Slurm login nodes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hpcadapt import hub
from hpcadapt.config import TRAINING_KINDS, ConfigError, world_size
from hpcadapt.datamix import check_source, is_local
from hpcadapt.errors import DataError, ModelError
from hpcadapt.preflight import CHAT_KINDS
from hpcadapt.stagedir import is_complete, read_manifest, staging_dir_for, write_json_atomic

PLAN_VERSION = 3  # bump when the meaning of a stage's settings or inputs changes
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
    spec: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass
class PipelinePlan:
    name: str
    run_dir: Path
    stages: list[StagePlan]
    # Models the evaluation compares, label -> stage name or external model reference.
    models: dict[str, str]

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)


def plan_pipeline(cfg: Any) -> PipelinePlan:
    """Build the plan. Checks data files and local models, so bad input fails here."""
    root = Path(cfg.output_root).expanduser().resolve()
    stages_root = root / "stages"
    pipe = cfg.pipeline
    plans: dict[str, StagePlan] = {}
    identities: dict[str, str] = {}  # stage name -> hash
    nprocs = world_size(cfg)

    revisions: dict[str, str] = {}  # hub model id -> pinned commit, shared by every stage's spec

    def resolve_model(ref: str, who: str) -> tuple[str, str, list[str]]:
        """(path or hub id, identity, stages it depends on) for a model reference."""
        if ref.startswith("@"):
            name = ref[1:]
            if name not in plans:
                raise ModelError(f"{who} refers to {ref}, but no earlier stage is called {name!r}")
            return str(plans[name].stage_dir), identities[name], [name]
        if hub.is_hub_id(ref):
            key = "model.base_revision" if ref == cfg.model.base else "model.instruct_revision"
            if ref not in revisions:
                revisions[ref] = hub.pin(ref, "model", OmegaConf.select(cfg, key), key)
            return ref, f"hub:{ref}@{revisions[ref]}", []
        return ref, model_identity(ref), []

    def add_stage(name: str, kind: str, inputs: dict[str, Any], settings: dict[str, Any], deps: list[str],
                  procs: int, extra_spec: dict[str, Any]) -> StagePlan:
        loading = model_loading(cfg)
        semantic = {k: v for k, v in settings.items() if k not in NON_SEMANTIC}
        digest = stable_hash({"v": PLAN_VERSION, "kind": kind, "settings": semantic, "inputs": inputs,
                              "loading": {"dtype": loading["dtype"]}})
        stage_dir = stages_root / f"{name}-{digest[:12]}"
        spec = {
            "name": name,
            "kind": kind,
            "hash": digest,
            "pipeline": pipe.name,
            "stage_dir": str(stage_dir),
            "staging_dir": str(staging_dir_for(stage_dir)),
            "inputs": inputs,
            "settings": settings,
            "wandb": wandb_settings(cfg),
            "model_loading": loading,
            "revisions": revisions,
            **extra_spec,
        }
        plan = StagePlan(
            name=name,
            kind=kind,
            stage_dir=stage_dir,
            spec_path=staging_dir_for(stage_dir) / "spec.json",
            depends_on=deps,
            nprocs=procs,
            done=is_complete(stage_dir),
            spec=spec,
        )
        plans[name] = plan
        identities[name] = digest
        return plan

    def add_training(name: str, input_ref: str | None) -> None:
        stage_cfg = cfg.stages[name]
        settings = scaled(to_dict(stage_cfg), cfg.scale) if stage_cfg.kind in TRAINING_KINDS else to_dict(stage_cfg)
        sources = mix_sources(cfg, stage_cfg.data, stage_cfg.kind) if stage_cfg.data else []
        # Content, not location: the same files under another output root are the same input.
        inputs: dict[str, Any] = {"data": [source_identity(s) for s in sources]}
        deps: list[str] = []
        extra: dict[str, Any] = {"data_sources": sources, "deepspeed": to_dict(cfg.deepspeed),
                                 "keep_checkpoints": stage_cfg.keep_checkpoints}
        if input_ref is not None:
            path, ident, deps = resolve_model(input_ref, f"stage {name!r}")
            inputs["model"] = ident
            extra["input_model"] = path
        instruct = cfg.model.instruct
        if stage_cfg.kind in CHAT_KINDS and (not instruct.startswith("@") or instruct[1:] in plans):
            # A Base model without a chat template borrows the Instruct model's (preflight).
            extra["instruct_model"], inputs["instruct_model"], more = resolve_model(instruct, f"stage {name!r}")
            deps += [d for d in more if d not in deps]
        add_stage(name, stage_cfg.kind, inputs, settings, deps, nprocs if stage_cfg.kind in TRAINING_KINDS else 1, extra)

    # 1. Stages that build models the chain refers to (`@name`): each feeds the next.
    previous: str | None = None
    for name in pipe.prepare:
        add_training(name, None if cfg.stages[name].kind == "tiny_init" else f"@{previous}")
        previous = name

    # 2. The chain, from the Base or the Instruct model.
    start_ref = cfg.model.base if pipe.start == "base" else cfg.model.instruct
    models: dict[str, str] = {pipe.start: start_ref}
    current = start_ref
    for name in pipe.chain:
        add_training(name, current)
        current = f"@{name}"
        models[name] = current

    # 3. SLERP (or another method) of the chain's result with the Instruct model.
    if pipe.merge and pipe.chain:
        base_path, base_id, base_deps = resolve_model(cfg.model.instruct, "merge (model.instruct)")
        other_path, other_id, other_deps = resolve_model(current, "merge")
        merge_settings = to_dict(cfg.merge)
        add_stage(
            "merge", "merge", {"base_model": base_id, "model": other_id}, merge_settings,
            base_deps + other_deps, 1,
            {"base_model": base_path, "other_model": other_path},
        )
        models.setdefault("instruct", cfg.model.instruct)
        models["merged"] = "@merge"

    # 4. Evaluation of every model of the chain on identical questions.
    if pipe.evaluate and (cfg.data.benchmark or cfg.data.heldout):
        eval_models, model_ids, deps = {}, {}, []
        for label, ref in models.items():
            path, ident, more = resolve_model(ref, f"evaluation of {label!r}")
            eval_models[label], model_ids[label] = path, ident
            deps += [d for d in more if d not in deps]
        files = [*cfg.data.benchmark, *([cfg.data.heldout] if cfg.data.heldout else [])]
        for f in files:
            if not Path(f).expanduser().is_file():
                raise ModelError(f"evaluation file {f} does not exist (data.benchmark / data.heldout)")
        synergy = None
        if "merged" in eval_models:
            synergy = {"merged": "merged", "parents": ["instruct", pipe.chain[-1]]}
        add_stage(
            "eval", "eval",
            {"models": model_ids, "files": [data_identity(f) for f in files]},
            to_dict(cfg.eval), deps, 1,
            {"models": eval_models, "benchmark": list(cfg.data.benchmark), "heldout": cfg.data.heldout,
             "synergy": synergy, "merge_t": to_dict(cfg.merge)["t"]},
        )

    stage_list = list(plans.values())
    check_batch_arithmetic([p for p in stage_list if not p.done], cfg, nprocs)
    run_dir = root / "runs" / f"{pipe.name}-{stable_hash([s.spec['hash'] for s in stage_list])[:8]}"
    for s in stage_list:  # one W&B group per pipeline run
        s.spec["wandb"]["group"] = run_dir.name
    return PipelinePlan(name=pipe.name, run_dir=run_dir, stages=stage_list, models=models)


def check_batch_arithmetic(stages: list[StagePlan], cfg: Any, nprocs: int) -> None:
    """Gradient accumulation must be whole for every stage that will run on `nprocs` processes.

    Checked at planning, not composition: finished stages (perhaps trained on another
    world size) are not held to it, and a bad stage fails before any job starts.
    """
    for stage in stages:
        if stage.kind not in TRAINING_KINDS:
            continue
        s = stage.spec["settings"]
        if s["global_batch_size"] % (s["per_device_train_batch_size"] * nprocs):
            raise ConfigError(
                f"stages.{stage.name}.global_batch_size ({s['global_batch_size']}) is not a multiple of "
                f"per_device_train_batch_size ({s['per_device_train_batch_size']}) x world size ({nprocs} "
                f"processes): gradient accumulation must be a whole number"
            )


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


def write_specs(plan: PipelinePlan) -> None:
    """Write each unfinished stage's spec into its staging folder, and the run's plan file."""
    for stage in plan.stages:
        if stage.done:
            continue
        stage.spec_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stage.spec_path, stage.spec)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan.run_dir / "plan.json", {
        "pipeline": plan.name,
        "models": plan.models,
        "stages": [{"name": s.name, "kind": s.kind, "dir": str(s.stage_dir), "depends_on": s.depends_on,
                    "nprocs": s.nprocs} for s in plan.stages],
    })


# ----------------------------------------------------------------------------- helpers


def to_dict(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def mix_sources(cfg: Any, mix_name: str, kind: str) -> list[dict[str, Any]]:
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
        src["rows"] = check_source(src["path"], kind, key)
        src["seed"] = cfg.data.mixes[mix_name].seed
        sources.append(src)
    return sources


def source_identity(src: dict[str, Any]) -> dict[str, Any]:
    """What of a source decides a stage's result: its content (or pinned hub commit) and how it is
    drawn, not where the file lies or where it was fetched from."""
    ident = {k: v for k, v in src.items() if k not in ("path", "hub", "revision")}
    ident["identity"] = f"hub:{src['path']}@{src['revision']}" if src.get("revision") else data_identity(src["path"])
    return ident


def data_identity(path: str) -> str:
    """Content hash for local files (cached by size and mtime); the id for hub datasets."""
    p = Path(path).expanduser()
    if not p.exists():
        return f"hub:{path}"
    if p.is_dir():
        return "dir:" + stable_hash(sorted((str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
                                           for f in p.rglob("*") if f.is_file()))
    return "sha256:" + file_sha256(p)


_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(p: Path) -> str:
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def model_identity(ref: str) -> str:
    """Identify a local model folder without reading its weights.

    A finished hpcadapt stage is identified by its hash. Another folder by its config and
    the names, sizes and modification times of its weight files (hashing 15 GB on every
    plan would be too slow). Hub ids are pinned to a commit by `hub.pin` instead.
    """
    p = Path(ref).expanduser()
    if not p.exists():
        raise ModelError(f"model folder {ref} does not exist (nor is it a hub id like org/name)")
    if not p.is_dir():
        raise ModelError(f"model path {ref} is a file; expected a Hugging Face model folder")
    if is_complete(p):
        return "stage:" + read_manifest(p)["hash"]
    weights = sorted(p.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.glob("*.bin")) + sorted(p.glob("*.pt"))
        hint = " It has pickled weights; convert them to safetensors first." if pickled else ""
        raise ModelError(f"model folder {p} has no *.safetensors weights.{hint}")
    if not (p / "config.json").is_file():
        raise ModelError(f"model folder {p} has no config.json")
    return "local:" + stable_hash({
        "config": (p / "config.json").read_text(),
        "weights": [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights],
    })


def wandb_settings(cfg: Any) -> dict[str, Any]:
    """W&B settings for a stage; `group` (the pipeline run) is added once the run folder is known."""
    return {**to_dict(cfg.wandb), "config": to_dict(cfg)}


def model_loading(cfg: Any) -> dict[str, Any]:
    m = cfg.model
    return {"dtype": m.dtype, "attn_implementation": m.attn_implementation,
            "trust_remote_code": m.trust_remote_code,
            "chat_template_file": m.chat_template_file}
