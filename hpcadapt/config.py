"""Typed schema for everything in `conf/`.

Hydra merges the YAML files onto these dataclasses, so a misspelt key or a value of
the wrong type fails at composition time with the key's full name, before any model
is touched. Cross-field rules that a type cannot express (a DPO stage needs a beta,
ZeRO-3 on Slurm wants one task per GPU) live in `validate()`, which the entry point
runs right after composition.

This module must stay importable without torch: `--cfg job` and Slurm submission on a
login node load it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hpcadapt_merge.schedule import PAPER_SLERP_T
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from hpcadapt.attention import CHOICES as ATTENTION_CHOICES
from hpcadapt.errors import HpcadaptError
from hpcadapt.stages import kinds


@dataclass
class ModelConfig:
    """A model family: where its Base and Instruct checkpoints live and how to load them.

    `base`/`instruct` are hub ids (resolved from the local HF cache; nothing is downloaded
    when HF_HUB_OFFLINE=1), local folders, or `@stage_name` for a model this pipeline
    builds itself (the tiny demo does).
    """

    name: str = MISSING
    # The tokenizer and architecture family, for `scale=rehearsal` stand-ins:
    # mistral_v03 | llama31 | smollm (hpcadapt/rehearsal/standins.py); None for the demo.
    family: Optional[str] = None
    base: str = MISSING
    instruct: str = MISSING
    # Commits of hub models (a sha, or a branch resolved to its sha at planning; None: main).
    base_revision: Optional[str] = None
    instruct_revision: Optional[str] = None
    dtype: str = "bfloat16"  # bfloat16 | float16 | float32; CPU runs always use float32
    # sdpa | eager | flash_attention_2 | flash_attention_3 | auto (flash where importable, else sdpa)
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    # A Jinja file to install as the chat template when the tokenizer has none. Never
    # guessed: chat stages fail without a template unless this is set.
    chat_template_file: Optional[str] = None


@dataclass
class PeftConfig:
    """Low-rank adapters (peft) instead of full-parameter training: for one or two GPUs rather
    than the paper's node of eight. QLoRA loads the frozen weights in 4 bits (bitsandbytes, CUDA
    only). At the end of the stage the adapter is merged into full 16-bit weights, so the next
    stages, the SLERP merge and the evaluation read an ordinary model folder; the adapter is
    kept beside them in `adapter/`."""

    method: str = "none"  # none (every weight trains, as in the paper) | lora | qlora
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # or a list of module names, e.g. [q_proj, v_proj]


@dataclass
class StageConfig:
    """One training stage: which recipe (`kind`), on which data mix, with which settings.

    Batch sizes follow the paper: `global_batch_size` is fixed and gradient accumulation
    is derived from the world size at launch, so the same experiment means the same
    optimisation on 1 GPU or 64.
    """

    kind: str = MISSING  # a kind of hpcadapt/stages/kinds.py: tiny_init | cpt | sft | dpo | orpo | kto | simpo
    data: Optional[str] = None  # name of a mix in data.mixes
    learning_rate: float = 2e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs (tiny runs, smoke tests)
    global_batch_size: int = 8
    per_device_train_batch_size: int = 1
    max_length: int = 2048
    # Kind-specific settings: None means the kind's default (hpcadapt/stages/kinds.py); setting
    # one that the stage's kind does not read is an error.
    packing: Optional[bool] = None  # cpt (default on), sft (off)
    assistant_only_loss: Optional[bool] = None  # sft: loss only on assistant turns (default on)
    beta: Optional[float] = None  # dpo, orpo, kto, simpo (required)
    loss_type: Optional[str] = None  # dpo loss variant (default sigmoid)
    max_prompt_length: Optional[int] = None  # orpo, simpo: the prompt's share of max_length
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    seed: int = 42
    logging_steps: int = 10
    # Resumable checkpoints: on the preemption/time-limit signal, every
    # `checkpoint_every_minutes` of training, and every `save_steps` steps if > 0; never at
    # the last step, whose model is saved anyway (at 7B a ZeRO-3 checkpoint is ~112 GB).
    checkpoint_every_minutes: float = 60.0
    save_steps: int = 0
    keep_checkpoints: bool = False  # keep Trainer checkpoints in the finished stage folder
    peft: PeftConfig = field(default_factory=PeftConfig)
    # Anything else the TRL config accepts, passed through unchanged.
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class HubDataset:
    """Where a local data file comes from: what `python -m hpcadapt.data fetch` downloads,
    and how its columns become the fields a stage reads."""

    id: str = MISSING
    subset: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None  # a commit sha, or a branch that fetch resolves and records
    fields: Dict[str, str] = field(default_factory=dict)  # stage field -> dataset column, when they differ
    # `implicit_prompt`: `chosen`/`rejected` are whole conversations sharing their prompt
    # (orpo-dpo-mix-40k); fetch splits off the prompt as TRL's explicit format has it.
    convert: Optional[str] = None


@dataclass
class DataSource:
    """One dataset in a mix.

    `weight` is the fraction of this source's rows that enter the mix (alignment-handbook
    semantics): 0.5 keeps a seeded half, 2.0 repeats every row twice, 1.5 repeats once
    and adds a seeded half.
    """

    path: str = MISSING  # .jsonl/.json/.parquet file, saved HF dataset folder, or hub id
    weight: float = 1.0
    split: str = "train"
    subset: Optional[str] = None  # hub config name
    revision: Optional[str] = None  # for a hub id: commit sha (a branch is pinned to its sha at planning)
    hub: Optional[HubDataset] = None  # for a local file: its origin, for `hpcadapt.data fetch`


@dataclass
class DataMix:
    sources: List[DataSource] = field(default_factory=list)
    seed: int = 0


@dataclass
class DataConfig:
    name: str = MISSING
    # Set to "tiny_domain" to have the pipeline write the demo's fictional domain into
    # `${output_root}/demo_data` before planning.
    generate: Optional[str] = None
    mixes: Dict[str, DataMix] = field(default_factory=dict)
    benchmark: List[str] = field(default_factory=list)  # JSONL question sets of the domain
    # JSONL question sets of general ability, which adaptation should keep (the merge's point);
    # scored for every model beside the domain (hpcadapt/stages/evaluate.py).
    general_benchmark: List[str] = field(default_factory=list)
    heldout: Optional[str] = None  # JSONL {"text"} for perplexity


@dataclass
class SpeedConfig:
    """How fast training stages run. These options change speed, not what a stage computes
    (up to floating-point order), so they stay out of the stage hash; every choice, and the
    reason for a fallback, is printed and kept in the stage's manifest (hpcadapt/training.py)."""

    liger: str = "auto"  # Liger kernels: auto (where liger-kernel imports and the stage runs on CUDA) | on | off
    compile: bool = False  # torch.compile the model
    tf32: bool = True  # TF32 matrix multiplies on GPUs that have them


@dataclass
class DeepSpeedConfig:
    """DeepSpeed settings rendered into the JSON that the HF Trainer consumes."""

    name: str = "zero3"
    enabled: bool = True
    stage: int = 3
    offload_optimizer: bool = False
    offload_params: bool = False
    # Without this, a ZeRO-3 save writes empty placeholder tensors.
    gather_16bit_weights_on_model_save: bool = True
    overlap_comm: bool = True
    contiguous_gradients: bool = True


@dataclass
class OneTaskResources:
    """What a one-task stage (merge, eval) asks Slurm for. It never inherits the training
    jobs' `mem_gb` or `additional_parameters` (e.g. `exclusive`): a merge needs no node of
    8 GPUs. None for partition/account/qos means the cluster's."""

    gpus: int = 0
    cpus_per_task: int = 8
    mem_gb: Optional[int] = None
    timeout_min: int = 240
    partition: Optional[str] = None
    additional_parameters: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ClusterConfig:
    """Where stages run. `local`: `nprocs` processes on this machine. `slurm`: one job per stage."""

    kind: str = "local"  # local | slurm
    nprocs: int = 1
    # Slurm
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 4
    mem_gb: Optional[int] = None
    timeout_min: int = 1440
    setup: List[str] = field(default_factory=list)
    # The interpreter jobs run. None: `python3` as the setup lines leave it on PATH when
    # there are setup lines (they activate the job's environment), else this interpreter.
    python: Optional[str] = None
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # training jobs only
    merge: OneTaskResources = field(default_factory=OneTaskResources)
    eval: OneTaskResources = field(default_factory=OneTaskResources)
    # The job that writes the grid's tables and plots once every stage has ended: one core, minutes.
    report: OneTaskResources = field(
        default_factory=lambda: OneTaskResources(gpus=0, cpus_per_task=1, mem_gb=4, timeout_min=30))
    array_parallelism: int = 8
    max_num_timeout: int = 3
    log_root: Optional[str] = None  # default: ${output_root}/slurm
    snapshot_code: bool = True
    # Memory of one GPU in GiB (an 80 GB H100: 80). When set, planning refuses a training stage whose
    # estimated memory per GPU (hpcadapt/estimate.py) exceeds it, naming changes that fit. None: no check.
    gpu_memory_gb: Optional[float] = None
    # Training tokens per second per GPU, for each stage's time estimate. None: what a finished training
    # stage of the same graph measured (its manifest's metrics.speed), else no time estimate.
    tokens_per_s_per_gpu: Optional[float] = None
    # The Slurm time limit of a training job: 1.5 x the stage's time estimate + 15 min, at least 30 min,
    # at most timeout_min. timeout_min as it is for a stage without an estimate, everywhere when
    # estimate_time_limit is false, and never for stages named in stage_timeout_min (stage name ->
    # minutes), which fix their own limit.
    estimate_time_limit: bool = True
    stage_timeout_min: Dict[str, int] = field(default_factory=dict)


@dataclass
class PipelineConfig:
    """The chain: start model -> `chain` stages in order -> merge -> evaluation.

    Strategy names follow the paper: start=instruct, chain=[cpt, sft, orpo], merge=true is
    `Instruct-CPT-SFT-ORPO-SLERP`. `prepare` lists stages that build models the chain
    refers to as `@name` (the tiny demo builds its own Base and Instruct that way).
    """

    name: str = "pipeline"
    start: str = "instruct"  # base | instruct
    prepare: List[str] = field(default_factory=list)
    chain: List[str] = field(default_factory=list)
    merge: bool = True
    evaluate: bool = True


@dataclass
class MergeConfig:
    """SLERP (or another merger method) of the chain's last model with the Instruct model.

    The Instruct model is mergekit's `base_model`, the t = 0 end, as in the paper.
    """

    method: str = "slerp"
    t: Any = field(default_factory=lambda: copy.deepcopy(PAPER_SLERP_T))  # the paper's schedule
    # The recipe's other parameters, as mergekit names them (weight, density, lambda, ...); `t`
    # goes to methods that read it (the merger's registry says which).
    parameters: Dict[str, Any] = field(default_factory=dict)
    dtype: str = "bfloat16"
    workers: Optional[int] = None


@dataclass
class EvalConfig:
    protocols: List[str] = field(default_factory=lambda: ["loglik", "generate"])
    batch_size: int = 16
    max_new_tokens: int = 8
    bootstrap_samples: int = 2000
    seed: int = 0
    # SLERP schedules to compare on the same parents, merged in memory (hpcadapt/eval/sweep.py):
    # paper | ramp_up | ramp_down | a number (constant t) | {name: ..., t: ...}; ranked in the synergy report.
    schedules: List[Any] = field(default_factory=list)
    # lm-evaluation-harness tasks for general ability, run on every model of the chain (needs
    # `pip install hpcadapt[eval]` and the tasks' datasets in the local HF cache).
    lm_eval_tasks: List[str] = field(default_factory=list)
    lm_eval_limit: Optional[int] = None  # questions per task, for a quick look
    lm_eval_include: Optional[str] = None  # a folder of task YAMLs of one's own (e.g. hpcadapt.eval.lm_eval_tasks)


@dataclass
class ScaleConfig:
    """How large a run is. `full`: the experiment as written. `rehearsal`: the same experiment
    (stage kinds and order, settings, DeepSpeed, packing, data-mix structure and weights,
    merge schedule, evaluation) on locally built stand-ins of the model family with its
    real tokenizer, and on small local stand-ins of the data, with sizes and step counts
    capped, so the real path runs end to end on a CPU in minutes (hpcadapt/rehearsal/).

    The caps apply to every training stage before its folder is hashed; None keeps the
    experiment's value. `max_prompt_length` shrinks in proportion to `max_length`.
    """

    name: str = "full"
    standins: bool = False  # build and use stand-ins of model.family and of the data under data_root
    max_steps: Optional[int] = None
    max_length: Optional[int] = None
    global_batch_size: Optional[int] = None
    per_device_train_batch_size: Optional[int] = None
    standin_layers: int = 4
    standin_hidden_size: int = 64


@dataclass
class WandbConfig:
    """W&B logging. `mode` None means online when WANDB_API_KEY is set, offline otherwise."""

    enabled: bool = True
    project: str = "hpcadapt"
    entity: Optional[str] = None
    mode: Optional[str] = None  # online | offline | disabled
    tags: List[str] = field(default_factory=list)


@dataclass
class GridConfig:
    """A comparison of strategies, planned as one graph of shared stages (hpcadapt/grid.py).

    `strategies` lists chains by the paper's names (`Instruct-CPT-SFT-ORPO-SLERP`: start
    model, stages by kind, SLERP or not) or as {start, chain, merge} mappings. The paper
    sets some stages differently by start model (CPT batch 384 from Base, 192 from
    Instruct; ORPO's rate and epochs); `from_base` / `from_instruct` hold those settings,
    stage name -> overrides. An empty list runs `pipeline` alone.
    """

    name: str = "grid"
    strategies: List[Any] = field(default_factory=list)
    from_base: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    from_instruct: Dict[str, Dict[str, Any]] = field(default_factory=dict)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: Dict[str, StageConfig] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    output_root: str = "outputs"
    # Modules imported before validation and in every stage process, to register stage kinds
    # (hpcadapt/stages/kinds.py) or merge methods of one's own.
    plugins: List[str] = field(default_factory=list)
    data_root: str = "data"  # where local copies of datasets live (conf/config.yaml: $HPCADAPT_DATA)
    verbose: bool = False  # show every stage's full output (libraries, W&B, progress bars), not only hpcadapt's
    # Threads of each stage process (torch intra-op). Set it and a CPU run's numbers no longer
    # depend on the machine's core count or OMP_NUM_THREADS (the demo sets 1); None: torch's default.
    threads: Optional[int] = None
    dry_run: bool = False  # print the plan (and Slurm scripts) without running anything
    status: bool = False  # show each stage's state instead of running


def register_configs() -> None:
    """Make the schema available to `conf/config.yaml` as `base_config`."""
    ConfigStore.instance().store(name="base_config", node=Config)


class ConfigError(HpcadaptError):
    """A configuration that composes but cannot run; the message names the key."""


def validate(cfg: Any) -> None:
    """Cross-field checks that types cannot express. Raises ConfigError naming the key."""
    import_plugins(cfg.plugins)
    check_known_keys(cfg, "")
    pipe = cfg.pipeline
    if pipe.start not in ("base", "instruct"):
        raise ConfigError(f"pipeline.start must be 'base' or 'instruct', got {pipe.start!r}")
    for where, names in (("pipeline.prepare", pipe.prepare), ("pipeline.chain", pipe.chain)):
        for name in names:
            if name not in cfg.stages:
                known = ", ".join(sorted(cfg.stages)) or "none"
                raise ConfigError(f"{where} names stage {name!r}, but stages has no such entry (known: {known})")
    if len(set(pipe.prepare) | set(pipe.chain)) != len(pipe.prepare) + len(pipe.chain):
        raise ConfigError("a stage appears twice in pipeline.prepare/pipeline.chain; give each use its own name")
    for name, stage in cfg.stages.items():
        key = f"stages.{name}"
        kind = kinds.get(stage.kind)
        if kind.data_fields and not stage.data:
            raise ConfigError(f"{key}.data is not set; a {stage.kind} stage needs a data mix")
        if stage.data and stage.data not in cfg.data.mixes:
            known = ", ".join(sorted(cfg.data.mixes)) or "none"
            raise ConfigError(f"{key}.data names mix {stage.data!r}, not in data.mixes (known: {known})")
        for setting in kinds.KIND_SPECIFIC_SETTINGS:
            value = stage[setting]
            if value is not None and setting not in kind.reads:
                reads = ", ".join(kind.reads) or "none of them"
                raise ConfigError(f"{key}.{setting} is set, but a {stage.kind} stage does not read it (of the "
                                  f"kind-specific settings it reads {reads}); remove it")
            if value is None and kind.reads.get(setting, None) is kinds.REQUIRED:
                raise ConfigError(f"{key}.{setting} is not set; a {stage.kind} stage needs it")
        check_stage_numbers(stage, key)
        if stage.peft.method != "none":
            if stage.peft.method not in ("lora", "qlora"):
                raise ConfigError(f"{key}.peft.method must be none, lora or qlora, got {stage.peft.method!r}")
            if cfg.deepspeed.enabled and cfg.deepspeed.stage == 3:
                raise ConfigError(
                    f"{key}.peft: adapters train without ZeRO-3 (its partitioned weights cannot be merged "
                    f"with the adapter in place); use deepspeed=none or deepspeed=zero2"
                )
        if stage.global_batch_size < stage.per_device_train_batch_size:
            raise ConfigError(
                f"{key}.global_batch_size ({stage.global_batch_size}) is smaller than "
                f"per_device_train_batch_size ({stage.per_device_train_batch_size})"
            )
    for mix_name, mix in cfg.data.mixes.items():
        seen = set()
        for i, src in enumerate(mix.sources):
            ident = (src.path, src.split, src.subset)
            if ident in seen:
                raise ConfigError(
                    f"data.mixes.{mix_name}.sources[{i}] repeats {src.path!r}; list each dataset once and set "
                    f"its weight"
                )
            seen.add(ident)
            if src.weight <= 0:
                raise ConfigError(f"data.mixes.{mix_name}.sources[{i}].weight must be > 0, got {src.weight}")
    if cfg.deepspeed.enabled and cfg.deepspeed.stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed.stage must be 0-3, got {cfg.deepspeed.stage}")
    cl = cfg.cluster
    from hpcadapt.launch import LAUNCHERS

    if cl.kind not in LAUNCHERS:
        raise ConfigError(f"cluster.kind must be one of {', '.join(LAUNCHERS)} (hpcadapt/launch/), got {cl.kind!r}")
    if cl.kind == "local" and cl.nprocs < 1:
        raise ConfigError(f"cluster.nprocs must be >= 1, got {cl.nprocs}")
    if cl.kind == "slurm":
        if cl.nodes < 1 or cl.tasks_per_node < 1:
            raise ConfigError("cluster.nodes and cluster.tasks_per_node must be >= 1")
        if cl.gpus_per_node > 0 and cl.tasks_per_node != cl.gpus_per_node:
            raise ConfigError(
                f"cluster.tasks_per_node ({cl.tasks_per_node}) must equal cluster.gpus_per_node "
                f"({cl.gpus_per_node}): DeepSpeed runs one task per GPU"
            )
    if cfg.grid.strategies:
        from hpcadapt.grid import check_overrides, strategies_of

        strategies_of(cfg)  # every name parses and names stages that exist
        check_overrides(cfg)
    if cfg.model.attn_implementation not in ATTENTION_CHOICES:
        raise ConfigError(
            f"model.attn_implementation is {cfg.model.attn_implementation!r}; expected one of "
            f"{', '.join(ATTENTION_CHOICES)}"
        )
    if cfg.speed.liger not in ("auto", "on", "off"):
        raise ConfigError(f"speed.liger must be auto, on or off, got {cfg.speed.liger!r}")
    if cfg.wandb.mode not in (None, "online", "offline", "disabled"):
        raise ConfigError(f"wandb.mode must be online, offline or disabled, got {cfg.wandb.mode!r}")
    from hpcadapt_merge import methods as merge_methods  # the merger's registry (plugins may add to it)

    if cfg.merge.method not in merge_methods.METHOD_NAMES:
        raise ConfigError(f"merge.method {cfg.merge.method!r} is unknown; the merger implements "
                          f"{', '.join(merge_methods.METHOD_NAMES)}")


def check_known_keys(node: Any, where: str) -> None:
    """Every key of a typed section is a field of its schema. Hydra's `+key=value` (which its
    own error hint suggests for a misspelt key) adds unknown keys even to typed sections."""
    from dataclasses import fields, is_dataclass

    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            check_known_keys(item, f"{where}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    if is_dataclass(schema):
        known = {f.name for f in fields(schema)}
        unknown = sorted(set(node.keys()) - known)
        if unknown:
            import difflib

            near = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{where}{'.' if where else ''}{unknown[0]} is not a setting{hint}")
    for key in node.keys():
        if not OmegaConf.is_missing(node, key):
            check_known_keys(node._get_node(key), f"{where}.{key}" if where else str(key))


def check_stage_numbers(stage: Any, key: str) -> None:
    """Values that compose (right type) but cannot train, refused before anything runs."""
    rules = [
        (stage.learning_rate > 0, "learning_rate must be > 0", stage.learning_rate),
        (stage.max_length > 0, "max_length must be > 0", stage.max_length),
        (
            stage.per_device_train_batch_size >= 1,
            "per_device_train_batch_size must be >= 1",
            stage.per_device_train_batch_size,
        ),
        (stage.global_batch_size >= 1, "global_batch_size must be >= 1", stage.global_batch_size),
        (
            stage.num_train_epochs > 0 or stage.max_steps > 0,
            "num_train_epochs must be > 0 (or max_steps > 0)",
            stage.num_train_epochs,
        ),
        (0 <= stage.warmup_ratio < 1, "warmup_ratio must be in [0, 1)", stage.warmup_ratio),
        (stage.warmup_steps >= 0, "warmup_steps must be >= 0", stage.warmup_steps),
        (stage.weight_decay >= 0, "weight_decay must be >= 0", stage.weight_decay),
        (stage.beta is None or stage.beta > 0, "beta must be > 0", stage.beta),
        (
            stage.max_prompt_length is None or 0 < stage.max_prompt_length < stage.max_length,
            "max_prompt_length must be > 0 and below max_length",
            stage.max_prompt_length,
        ),
    ]
    for ok, rule, value in rules:
        if not ok:
            raise ConfigError(f"{key}: {rule}, got {value}")


def import_plugins(modules: List[str]) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"plugins names {module!r}, which cannot be imported ({e})") from None


def world_size(cfg: Any) -> int:
    """Processes a training stage runs on under the chosen cluster settings."""
    cl = cfg.cluster
    return cl.nprocs if cl.kind == "local" else cl.nodes * cl.tasks_per_node
