"""Will a training stage fit on the cluster's GPUs, and how long will it take? Answered before launch.

Memory per GPU, in bytes, for a decoder of N parameters (N_t of them trained) on W ranks,
following what hpcadapt/training.py loads and what DeepSpeed allocates:

    DeepSpeed, bf16/fp16 model     weights 2N, gradients 2N_t, optimizer 12N_t (fp32 master copy + Adam's
                                   two moments); ZeRO-1 divides the optimizer by W, ZeRO-2 the gradients
                                   too, ZeRO-3 the weights too. An fp32 model: weights 4N, gradients 4N_t,
                                   and still 12N_t of optimizer (DeepSpeed clones an fp32 master copy).
    no DeepSpeed                   weights 4N (fp32 master weights, bf16 autocast computes), gradients 4N_t,
                                   optimizer 8N_t (Adam's moments); + 4N_t of DDP gradient buckets when W > 1.
    LoRA / QLoRA                   only the adapter's N_t parameters train; QLoRA holds the layers' linear
                                   weights in 4-bit NF4 with double quantization (0.516 bytes each).
    activations (T tokens per micro-batch: micro-batch x max_length, x2 for preference pairs)
                                   without checkpointing T x L x A, with it T x (L x r h + A), where a layer
                                   keeps A = 2 (4h + p h) + p (3 q + 3 kv + 4 f) bytes per token (two RMS norms,
                                   q/k/v before and after RoPE, attention output, the gated MLP), p = 2 in
                                   bf16 (4 in fp32), r the residual stream's bytes (4 with fp32 weights);
                                   plus the logits: T x V x (2 + 4 + 4 + 4) (16-bit, fp32 copy, log-softmax,
                                   its gradient), T x V x 12 in fp32.
    reference model (DPO, KTO without an adapter): its weights, sharded like the policy's under ZeRO-3.
    buffers                        no DeepSpeed: the bf16 copies autocast makes of the weights, held for
                                   the backward pass (lm_head and every layer's linear weights; with
                                   checkpointing lm_head and one layer). ZeRO-3: the largest parameter and
                                   the prefetch bucket (0.9 h^2) gathered in 16 bits, the reduce bucket
                                   (h^2), and the fp32 gradients of one sub-group (at most 1e9 elements)
                                   at the optimizer step. ZeRO-1/2: the all-gather bucket (5e8 elements),
                                   the reduce bucket and the fp32 gradients of the rank's partition.
    runtime                        1 GiB: CUDA context, NCCL and allocator slack.

The model's shape comes from its config.json (a local folder, or the hub cache for a pinned
hub id); a stage whose model is not reachable, or is built by a stage that has not run yet,
is not estimated, and the dry run says so. `cluster.gpu_memory_gb` is compared with the total.
Measured: on a CPU, one step's weights, gradients and optimizer state (without DeepSpeed and
under ZeRO-3) are what tensors hold, within 2% (tests/spine/test_spine_estimate.py); on one
H200, a 1.1B Llama without DeepSpeed (bf16 autocast, 2-8 x 2048-4096 tokens, checkpointing on
and off) peaked 5-18% below the estimate less its runtime reserve.

Wall time = steps x tokens per step / (tokens/s per GPU x W), where tokens per step =
global batch (micro-batch x gradient accumulation x W) x max_length x sequences per example,
x4/3 for a reference model's extra forward pass. Steps are `max_steps`, or epochs x rows of
the mix (weights applied) / global batch: with packing an upper bound, since a packed row
holds one or more documents. The Slurm time limit of a training job is
1.5 x estimate + 15 min, at least 30 min, at most `cluster.timeout_min` (hpcadapt/config.py
ClusterConfig explains when it applies).

Nothing here imports torch (planning runs on login nodes); the arithmetic needs only the
standard library.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpcadapt.errors import HpcadaptError

GIB = 2**30
RUNTIME_RESERVE = GIB
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights, 8-bit absmax per 64, fp32 absmax per 256 of those
ZERO3_SUB_GROUP = 1_000_000_000  # DeepSpeed's sub_group_size: the fp32 gradients made at once at the step
ZERO12_ALLGATHER_BUCKET = 500_000_000  # DeepSpeed's allgather_bucket_size (ZeRO-1/2)
LAYER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Kinds whose rows are preference pairs processed together (chosen and rejected), and kinds that
# run a frozen reference model beside the policy (the recipe passes its own, which TRL keeps
# even with precompute_ref_log_probs). Other kinds, plugins' among them: one sequence, no reference.
PAIRED_KINDS = ("dpo", "orpo", "simpo")
REFERENCE_KINDS = ("dpo", "kto")
UNPAIRED_KINDS = ("kto",)  # each pair becomes two examples
TIME_FACTOR, TIME_MARGIN_MIN, TIME_FLOOR_MIN = 1.5, 15, 30


class DoesNotFit(HpcadaptError):
    """A training stage whose estimated per-GPU memory exceeds cluster.gpu_memory_gb."""


@dataclass(frozen=True)
class ModelShape:
    """A decoder's dimensions (Llama, Mistral, Qwen and kin: gated MLP, grouped-query attention)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any], num_layers: int | None = None) -> ModelShape:
        """From a config.json's contents (a multimodal config's `text_config` where it has one)."""
        c = {**config, **(config.get("text_config") or {})}
        heads = int(c["num_attention_heads"])
        return cls(vocab_size=int(c["vocab_size"]), hidden_size=int(c["hidden_size"]),
                   intermediate_size=int(c["intermediate_size"]),
                   num_layers=int(num_layers if num_layers is not None else c["num_hidden_layers"]),
                   num_heads=heads, num_kv_heads=int(c.get("num_key_value_heads") or heads),
                   head_dim=int(c.get("head_dim") or int(c["hidden_size"]) // heads),
                   tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
                   attention_bias=bool(c.get("attention_bias", False)) or c.get("model_type") == "qwen2")

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """One layer's linear weights: name -> (in, out)."""
        h, f, q, kv = self.hidden_size, self.intermediate_size, self.q_width, self.kv_width
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    @property
    def layer_linear_parameters(self) -> int:
        return sum(i * o for i, o in self.linears().values())

    @property
    def layer_parameters(self) -> int:
        bias = self.q_width + 2 * self.kv_width if self.attention_bias else 0
        return self.layer_linear_parameters + bias + 2 * self.hidden_size  # + two RMS norms

    @property
    def embedding_parameters(self) -> int:
        """Input embedding and lm_head (once when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def parameters(self) -> int:
        return self.num_layers * self.layer_parameters + self.embedding_parameters + self.hidden_size

    @property
    def largest_parameter(self) -> int:
        return max(self.vocab_size * self.hidden_size, *(i * o for i, o in self.linears().values()))

    def adapter_parameters(self, r: int, target_modules: Any) -> int:
        """LoRA's A and B matrices, r x (in + out) per adapted weight; `all-linear` is every linear
        layer but lm_head, as peft reads it."""
        names = LAYER_LINEARS if target_modules in ("all-linear", "all_linear", None) else list(target_modules)
        total = 0
        for name in names:
            short = str(name).rsplit(".", 1)[-1]
            if short in self.linears():
                i, o = self.linears()[short]
                total += self.num_layers * r * (i + o)
            elif short in ("lm_head", "embed_tokens"):
                total += r * (self.vocab_size + self.hidden_size)
        return total


@dataclass(frozen=True)
class TrainingSetup:
    """How a stage trains, as far as memory and time depend on it."""

    world_size: int
    micro_batch: int
    max_length: int
    global_batch: int
    gradient_checkpointing: bool = True
    zero_stage: int | None = 3  # None: no DeepSpeed
    offload_optimizer: bool = False
    offload_params: bool = False
    half: bool = True  # bf16/fp16 model (model.dtype); False: fp32
    adapter: str | None = None  # None | lora | qlora
    lora_r: int = 16
    target_modules: Any = "all-linear"
    sequences: int = 1  # sequences per example in one forward pass: 2 for preference pairs
    reference: bool = False  # a frozen reference model beside the policy

    @property
    def gradient_accumulation(self) -> int:
        return max(1, self.global_batch // (self.micro_batch * self.world_size))

    def describe(self) -> str:
        ds = "deepspeed=none" if self.zero_stage is None else f"ZeRO-{self.zero_stage}"
        ds += " with CPU offload" if self.offload_optimizer or self.offload_params else ""
        adapter = f", {self.adapter} r={self.lora_r}" if self.adapter else ""
        pairs = " x 2 (pairs)" if self.sequences == 2 else ""
        checkpointing = "on" if self.gradient_checkpointing else "off"
        return (f"{self.world_size} rank(s), {ds}{adapter}, micro-batch {self.micro_batch} x {self.max_length} "
                f"tokens{pairs}, gradient accumulation {self.gradient_accumulation}, gradient checkpointing "
                f"{checkpointing}")


@dataclass
class MemoryEstimate:
    parts: dict[str, int]  # what -> bytes per GPU, in a fixed order

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self, of: float | None = None) -> str:
        parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in self.parts.items() if v)
        return f"{self.total / GIB:.1f} GiB per GPU{f' of {of:g}' if of else ''} ({parts})"


def estimate_memory(shape: ModelShape, s: TrainingSetup) -> MemoryEstimate:
    """Bytes per GPU of a training stage, by part (the module docstring gives the formulas)."""
    n = shape.parameters
    w_ranks = s.world_size
    deepspeed = s.zero_stage is not None
    weight_bytes = 2 if deepspeed and s.half else 4  # training.load_model: fp32 without DeepSpeed
    compute_bytes = 2 if s.half else 4
    shard = {k: (w_ranks if deepspeed and s.zero_stage >= k else 1) for k in (1, 2, 3)}

    def per_rank(count: int, ranks: int) -> int:  # ZeRO pads each partition to whole elements
        return -(-count // ranks)

    if s.adapter:
        trained = shape.adapter_parameters(s.lora_r, s.target_modules)
        quantized = shape.num_layers * shape.layer_linear_parameters if s.adapter == "qlora" else 0
        frozen = (n - quantized) * weight_bytes + quantized * NF4_BYTES
        weights = frozen + trained * weight_bytes  # ZeRO-3 does not take adapters (config.validate)
    else:
        trained = n
        weights = weight_bytes * per_rank(n, shard[3])
        if s.offload_params and s.zero_stage == 3:
            weights = 0
    if deepspeed:
        grad_bytes = 2 if s.half else 4
        gradients = grad_bytes * per_rank(trained, shard[2])
        if s.zero_stage == 0 and s.half:
            gradients += trained * 4  # BF16_Optimizer accumulates fp32 gradients
        optimizer = 0 if s.offload_optimizer else 12 * per_rank(trained, shard[1])
        if s.zero_stage == 0 and not s.half:
            optimizer = trained * 8
    else:
        gradients = trained * 4
        optimizer = trained * 8

    tokens = s.micro_batch * s.max_length * s.sequences
    h, f = shape.hidden_size, shape.intermediate_size
    per_layer = 2 * (4 * h + compute_bytes * h) + compute_bytes * (3 * shape.q_width + 3 * shape.kv_width + 4 * f)
    residual = 2 if weight_bytes == 2 else 4
    if s.gradient_checkpointing:
        activations = tokens * (shape.num_layers * residual * h + per_layer)
    else:
        activations = tokens * shape.num_layers * per_layer
    logits = tokens * shape.vocab_size * (14 if s.half else 12)

    reference = 0
    if s.reference and not s.adapter:  # with an adapter TRL switches it off instead
        reference = weight_bytes * per_rank(n, shard[3])

    buffers = 0
    if deepspeed and s.zero_stage == 3:
        buffers = (2 * (shape.largest_parameter + int(0.9 * h * h)) + 2 * h * h
                   + 4 * min(per_rank(trained, w_ranks), ZERO3_SUB_GROUP))
    elif deepspeed and s.zero_stage in (1, 2):
        buffers = 2 * (ZERO12_ALLGATHER_BUCKET + h * h) + 4 * per_rank(trained, w_ranks)
    if not deepspeed:
        if s.half:  # autocast's bf16 copies of the fp32 weights that the backward pass holds
            buffers += 2 * autocast_copies(shape, s)
            if s.reference and not s.adapter:
                buffers += 2 * shape.layer_linear_parameters  # the reference's, one layer at a time (no grad)
        if w_ranks > 1:
            buffers += 4 * trained  # DDP's gradient buckets
    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "reference model": reference,
             "activations": activations, "logits": logits, "buffers": buffers, "runtime": RUNTIME_RESERVE}
    return MemoryEstimate({k: int(v) for k, v in parts.items()})


def autocast_copies(shape: ModelShape, s: TrainingSetup) -> int:
    """Weights whose bf16 copies live until the backward pass: lm_head and every layer's linear
    weights, or with checkpointing lm_head and the one layer being recomputed. QLoRA's 4-bit
    weights are dequantized layer by layer instead."""
    layers = 1 if s.gradient_checkpointing or s.adapter == "qlora" else shape.num_layers
    return shape.vocab_size * shape.hidden_size + layers * shape.layer_linear_parameters


# ---------------------------------------------------------------------------------
# Time.


def tokens_per_step(s: TrainingSetup) -> int:
    """Tokens one optimizer step processes over all ranks: global batch x max_length x sequences."""
    return s.micro_batch * s.gradient_accumulation * s.world_size * s.max_length * s.sequences


def estimate_seconds(steps: int, s: TrainingSetup, tokens_per_s_per_gpu: float) -> float:
    """Training time; a reference model's forward pass adds a third of a forward and backward."""
    work = steps * tokens_per_step(s) * (4 / 3 if s.reference else 1.0)
    return work / (tokens_per_s_per_gpu * s.world_size)


def time_limit_min(seconds: float, cap_min: int) -> int:
    """A Slurm time limit for a stage estimated at `seconds`: 1.5 x estimate + 15 min, at least
    30 min, at most `cap_min`."""
    wanted = math.ceil(TIME_FACTOR * seconds / 60 + TIME_MARGIN_MIN)
    return int(min(cap_min, max(TIME_FLOOR_MIN, wanted)))


def steps_of(settings: dict[str, Any], sources: list[dict[str, Any]], kind: str) -> tuple[int | None, str]:
    """Optimizer steps of a stage, and how they were found (None: rows unknown, e.g. a hub dataset)."""
    if settings["max_steps"] > 0:
        return settings["max_steps"], "max_steps"
    examples = 0
    for src in sources:
        rows = int(src.get("rows", -1))
        if rows < 0:
            return None, f"the row count of {src['path']} is unknown"
        weight = float(src.get("weight", 1.0))
        examples += math.floor(weight) * rows + round((weight - math.floor(weight)) * rows)
    examples *= 2 if kind in UNPAIRED_KINDS else 1
    per_epoch = math.ceil(examples / settings["global_batch_size"])
    steps = max(1, math.ceil(per_epoch * settings["num_train_epochs"]))
    packed = "; fewer when packed" if settings.get("packing") else ""
    return steps, f"{settings['num_train_epochs']:g} epoch(s) x {examples:,} rows{packed}"


# ---------------------------------------------------------------------------------
# Stages of a plan.


def setup_of(settings: dict[str, Any], deepspeed: dict[str, Any], dtype: str, kind: str,
             world_size: int) -> TrainingSetup:
    """A stage's TrainingSetup from its planned settings (spec.settings), DeepSpeed config and dtype."""
    peft = settings.get("peft") or {}
    method = peft.get("method", "none")
    return TrainingSetup(
        world_size=world_size, micro_batch=settings["per_device_train_batch_size"],
        max_length=settings["max_length"], global_batch=settings["global_batch_size"],
        gradient_checkpointing=bool(settings["gradient_checkpointing"]),
        zero_stage=int(deepspeed["stage"]) if deepspeed.get("enabled") else None,
        offload_optimizer=bool(deepspeed.get("offload_optimizer")),
        offload_params=bool(deepspeed.get("offload_params")),
        half=dtype in ("bfloat16", "float16"), adapter=None if method == "none" else method,
        lora_r=int(peft.get("r", 16)), target_modules=peft.get("target_modules", "all-linear"),
        sequences=2 if kind in PAIRED_KINDS else 1, reference=kind in REFERENCE_KINDS)


def shape_of_folder(folder: Path) -> ModelShape:
    """The shape in a model folder's config.json; its layer count as the merger reads it."""
    from hpcadapt_merge.checkpoint import layer_count

    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    return ModelShape.from_config(config, layer_count(config, config_file))


def config_folder(ref: str, revisions: dict[str, str]) -> tuple[Path | None, str]:
    """The folder holding a model's config.json: a local folder, or the hub snapshot of a pinned id
    (the cache, else a download of config.json alone unless HF_HUB_OFFLINE=1). (None, why) otherwise."""
    from hpcadapt import hub

    path = Path(ref).expanduser()
    if (path / "config.json").is_file():
        return path, str(path)
    if ref not in revisions or not hub.is_hub_id(ref):
        return None, f"{ref} has no config.json"
    revision = revisions[ref]
    cached = hub.cache_folder(ref, "model") / "snapshots" / revision
    if (cached / "config.json").is_file():
        return cached, f"{ref}@{revision[:8]}"
    if hub.offline():
        return None, f"config.json of {ref}@{revision[:8]} is not in the hub cache and HF_HUB_OFFLINE=1"
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(ref, "config.json", revision=revision, cache_dir=hub.cache_root())).parent, ref
    except Exception as e:  # noqa: BLE001 - network, auth and not-found errors alike
        return None, f"config.json of {ref} could not be fetched ({type(e).__name__})"


@dataclass
class StageEstimate:
    name: str
    setup: TrainingSetup
    shape: ModelShape | None = None
    memory: MemoryEstimate | None = None
    memory_note: str = ""  # why there is no memory estimate
    steps: int | None = None
    steps_note: str = ""
    seconds: float | None = None
    speed: float | None = None  # tokens/s per GPU used
    speed_note: str = ""  # where the speed came from, or why there is no time estimate
    time_limit_min: int | None = None  # the Slurm --time of its job
    time_limit_note: str = ""
    suggestions: list[str] = field(default_factory=list)

    def describe(self, gpu_memory_gb: float | None, slurm: bool) -> str:
        if self.memory is not None:
            memory = f"memory {self.memory.describe(gpu_memory_gb)}"
        else:
            memory = f"memory not estimated: {self.memory_note}"
        if self.seconds is not None:
            time = (f"time {duration(self.seconds)}: {self.steps:,} steps [{self.steps_note}] x "
                    f"{tokens_per_step(self.setup):,} tokens at {self.speed:,.0f} tokens/s per GPU [{self.speed_note}]")
        else:
            time = f"time not estimated: {self.speed_note or self.steps_note}"
        if slurm and self.time_limit_min:
            time += f"; Slurm time limit {self.time_limit_min} min ({self.time_limit_note})"
        return f"  {self.name:<14} {self.setup.describe()}\n  {'':<14} {memory}\n  {'':<14} {time}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_graph(graph: Any, cfg: Any) -> dict[Path, StageEstimate]:
    """An estimate for every training stage of the graph that is not done, keyed by stage folder."""
    from hpcadapt.stages import kinds

    by_folder = {stage.folder: stage for stage in graph.ordered}
    speeds = known_speeds(graph, cfg)
    out: dict[Path, StageEstimate] = {}
    for stage in graph.ordered:
        plan = stage.plan
        if plan.done or plan.spec is None or not kinds.get(plan.kind).trains:
            continue
        spec = plan.spec
        setup = setup_of(spec.settings, spec.deepspeed, spec.model_loading["dtype"], plan.kind, plan.nprocs)
        est = StageEstimate(plan.name, setup)
        folder, note = model_folder(spec.input_model, spec.revisions, by_folder)
        if folder is None:
            est.memory_note = note
        else:
            try:
                est.shape = shape_of_folder(folder)
                est.memory = estimate_memory(est.shape, setup)
            except (KeyError, TypeError, ValueError, HpcadaptError) as e:  # a config.json of another layout
                est.memory_note = f"{folder / 'config.json'} does not give a decoder's shape ({e})"
        est.steps, est.steps_note = steps_of(spec.settings, spec.data_sources, plan.kind)
        found = speeds.get(plan.kind) or speeds.get("*")
        if found is None:
            est.speed_note = "no tokens/s per GPU (cluster.tokens_per_s_per_gpu, or a finished stage's measurement)"
        elif est.steps is not None:
            est.speed, est.speed_note = found
            est.seconds = estimate_seconds(est.steps, setup, est.speed)
        set_time_limit(est, cfg.cluster)
        out[plan.stage_dir] = est
    return out


def model_folder(ref: str | None, revisions: dict[str, str], by_folder: dict[Path, Any]) -> tuple[Path | None, str]:
    """The folder whose config.json gives a stage's model shape. A model this graph still has to
    build has the shape of the model its stage starts from (training keeps the shape)."""
    seen = 0
    while ref and Path(ref) in by_folder and not by_folder[Path(ref)].plan.done and seen < 100:
        maker = by_folder[Path(ref)].plan
        if maker.spec is None or not maker.spec.input_model:
            return None, f"its model is built by stage {maker.name}, which has not run yet"
        ref, seen = maker.spec.input_model, seen + 1
    if not ref:
        return None, "the stage has no input model"
    return config_folder(ref, revisions)


def known_speeds(graph: Any, cfg: Any) -> dict[str, tuple[float, str]]:
    """tokens/s per GPU by stage kind ("*": any kind), with where it comes from:
    cluster.tokens_per_s_per_gpu when set; else what finished training stages of this graph
    measured (their manifest's metrics.speed), a stage of the same kind first."""
    given = cfg.cluster.tokens_per_s_per_gpu
    if given:
        return {"*": (float(given), "cluster.tokens_per_s_per_gpu")}
    from hpcadapt.stagedir import read_manifest
    from hpcadapt.stages import kinds

    measured: dict[str, tuple[float, str]] = {}
    for stage in graph.ordered:
        plan = stage.plan
        if not plan.done or not kinds.get(plan.kind).trains:
            continue
        try:
            speed = (read_manifest(plan.stage_dir).get("metrics") or {}).get("speed") or {}
        except (OSError, ValueError):
            continue
        if speed.get("tokens_per_s_per_gpu"):
            record = (float(speed["tokens_per_s_per_gpu"]),
                      f"measured by stage {plan.name} on {speed.get('device') or 'its device'}")
            measured.setdefault(plan.kind, record)
            measured.setdefault("*", record)
    return measured


def set_time_limit(est: StageEstimate, cluster: Any) -> None:
    """The stage's Slurm time limit (the policy is in ClusterConfig's comments)."""
    fixed = (cluster.stage_timeout_min or {}).get(est.name)
    if fixed:
        est.time_limit_min, est.time_limit_note = int(fixed), f"cluster.stage_timeout_min.{est.name}"
    elif not cluster.estimate_time_limit:
        est.time_limit_min, est.time_limit_note = int(cluster.timeout_min), "cluster.timeout_min"
    elif est.seconds is None:
        est.time_limit_min, est.time_limit_note = int(cluster.timeout_min), "cluster.timeout_min: no estimate"
    else:
        est.time_limit_min = time_limit_min(est.seconds, int(cluster.timeout_min))
        capped = est.time_limit_min == int(cluster.timeout_min) and \
            TIME_FACTOR * est.seconds / 60 + TIME_MARGIN_MIN > cluster.timeout_min
        est.time_limit_note = (f"capped by cluster.timeout_min: the job is requeued up to cluster.max_num_timeout="
                               f"{cluster.max_num_timeout} times and resumes from its checkpoints" if capped
                               else f"{TIME_FACTOR:g} x estimate + {TIME_MARGIN_MIN} min, at least {TIME_FLOOR_MIN}")


# ---------------------------------------------------------------------------------
# What to change when a stage does not fit.


def suggestions(shape: ModelShape, s: TrainingSetup, limit: int, cluster: Any, name: str) -> list[str]:
    """Changes of the config (as overrides) after which the stage fits in `limit` bytes, each with its
    estimate; single changes first, else one combination."""
    key = f"stages.{name}"
    grow = "cluster.nprocs" if cluster.kind == "local" else "cluster.nodes"
    per_unit = 1 if cluster.kind == "local" else int(cluster.tasks_per_node)
    current = s.world_size // per_unit

    def whole(t: TrainingSetup) -> bool:
        return t.global_batch % (t.micro_batch * t.world_size) == 0

    def fits(t: TrainingSetup) -> bool:
        return whole(t) and estimate_memory(shape, t).total <= limit

    def more_gpus(t: TrainingSetup, extra: list[str]) -> str | None:
        for units in range(current + 1, max(current, 64) + 1):
            bigger = replace(t, world_size=units * per_unit)
            if fits(bigger):
                return change([*extra, f"{grow}={units}"], bigger)
        return None

    def change(overrides: list[str], t: TrainingSetup) -> str:
        return f"{' '.join(overrides)} ({estimate_memory(shape, t).total / GIB:.1f} GiB)"

    single: list[str] = []
    if not s.gradient_checkpointing and fits(replace(s, gradient_checkpointing=True)):
        single.append(change([f"{key}.gradient_checkpointing=true"], replace(s, gradient_checkpointing=True)))
    for micro in range(s.micro_batch - 1, 0, -1):
        smaller = replace(s, micro_batch=micro)
        if fits(smaller):
            single.append(change([f"{key}.per_device_train_batch_size={micro}"], smaller) +
                          f", gradient accumulation {smaller.gradient_accumulation}")
            break
    zero3 = replace(s, zero_stage=3, offload_optimizer=False, offload_params=False)
    if not s.adapter and s.zero_stage != 3:
        if fits(zero3):
            single.append(change(["deepspeed=zero3"], zero3))
        else:
            found = more_gpus(zero3, ["deepspeed=zero3"])
            single += [found] if found else []
    elif not s.adapter:
        found = more_gpus(s, [])
        single += [found] if found else []
    if not s.adapter:  # adapters train without ZeRO-3; under ZeRO-2 the frozen weights are bf16
        stages = list(dict.fromkeys([s.zero_stage if s.zero_stage != 3 else 2, 2]))
        tried = [(method, stage) for method in ("lora", "qlora") for stage in stages]
        for method, stage in tried:
            adapter = replace(s, adapter=method, zero_stage=stage, offload_params=False, offload_optimizer=False)
            if fits(adapter):
                switch = "deepspeed=none" if stage is None else f"deepspeed=zero{stage}"
                extra = [] if stage == s.zero_stage else [switch]
                single.append(change([*extra, f"{key}.peft.method={method}"], adapter))
                break
    if not s.adapter and not (s.offload_optimizer and s.offload_params):
        offload = replace(s, zero_stage=3, offload_optimizer=True, offload_params=True)
        if fits(offload):
            single.append(change(["deepspeed=zero3_offload"], offload) + ", slower")
    if single:
        return single
    # One combination: checkpointing, micro-batch 1, ZeRO-3, then as many GPUs as it takes.
    combined = replace(zero3 if not s.adapter else s, gradient_checkpointing=True, micro_batch=1)
    overrides = [f"{key}.gradient_checkpointing=true", f"{key}.per_device_train_batch_size=1",
                 *([] if s.adapter else ["deepspeed=zero3"])]
    if fits(combined):
        return [change(overrides, combined)]
    found = more_gpus(combined, overrides)
    return [found] if found else []


def check_fits(estimates: dict[Path, StageEstimate], cluster: Any) -> None:
    """Raise DoesNotFit naming every stage whose estimate exceeds cluster.gpu_memory_gb."""
    if not cluster.gpu_memory_gb:
        return
    limit = int(float(cluster.gpu_memory_gb) * GIB)
    problems = []
    for est in estimates.values():
        if est.memory is None or est.memory.total <= limit:
            continue
        est.suggestions = suggestions(est.shape, est.setup, limit, cluster, est.name)
        fix = ("; changes that fit: " + "; ".join(est.suggestions) if est.suggestions else
               "; no change of ZeRO stage, batch, checkpointing, adapter or GPU count found fits: use GPUs with "
               "more memory or a shorter max_length")
        problems.append(f"stage {est.name!r} will not fit in GPU memory: estimated {est.memory.describe()} on "
                        f"{est.setup.describe()}, but cluster.gpu_memory_gb is {float(cluster.gpu_memory_gb):g}{fix}")
    if problems:
        raise DoesNotFit("\n".join(problems))
