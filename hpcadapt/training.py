"""What every training recipe shares: devices and DeepSpeed, trainer settings, resume,
preemption, and a verified save.

The recipes in `hpcadapt/stages/` stay short because the cluster-facing details live
here, once:
- one code path for CPU and GPU: bf16 only where the GPU supports it, gloo on CPU;
- DeepSpeed is initialised *before* the TRL config is built, otherwise accelerate sets
  up only torch's process group and DeepSpeed's batch-size check fails;
- the global batch is fixed by the experiment and gradient accumulation derived from
  the world size;
- a stage resumes from its newest checkpoint, refusing a different world size;
- the final save is checked against the parameter count, since a ZeRO-3 save without
  16-bit gathering silently writes empty tensors.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcadapt import attention, stop_flag
from hpcadapt.atomic import replacing, write_json_atomic
from hpcadapt.config import ConfigError
from hpcadapt.errors import ModelError
from hpcadapt.spec import StageSpec


@dataclass
class Env:
    rank: int
    world_size: int
    cuda: bool
    bf16: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS_DROPPED_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def setup(spec: StageSpec) -> Env:
    """Read the distributed environment and start DeepSpeed/torch.distributed if needed."""
    import torch

    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    dtype = spec.model_loading["dtype"]
    bf16 = cuda and dtype == "bfloat16" and torch.cuda.is_bf16_supported()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if spec.deepspeed["enabled"]:
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    elif world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    elif world == 1:
        # One process needs no process group. With LOCAL_RANK set (our launchers always set
        # it), accelerate would start gloo and wrap the model in DistributedDataParallel,
        # whose per-step all-reduce made a tiny CPU stage 13-20% slower.
        for key in SINGLE_PROCESS_DROPPED_KEYS:
            os.environ.pop(key, None)
    return Env(rank=rank, world_size=world, cuda=cuda, bf16=bf16)


def deepspeed_config(ds: dict[str, Any]) -> dict[str, Any] | None:
    """The DeepSpeed JSON, with "auto" values that the HF Trainer fills from its arguments."""
    if not ds["enabled"]:
        return None
    zero: dict[str, Any] = {
        "stage": ds["stage"],
        "overlap_comm": ds["overlap_comm"],
        "contiguous_gradients": ds["contiguous_gradients"],
        "reduce_bucket_size": "auto",
    }
    if ds["stage"] == 3:
        zero.update({
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": ds["gather_16bit_weights_on_model_save"],
        })
        if ds["offload_params"]:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if ds["offload_optimizer"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }


def trainer_kwargs(spec: StageSpec, env: Env) -> dict[str, Any]:
    """Arguments common to every TRL config, from the stage's settings."""
    s = spec.settings
    per_step = s["per_device_train_batch_size"] * env.world_size
    if s["global_batch_size"] % per_step:
        raise ConfigError(
            f"stages.{spec.name}.global_batch_size ({s['global_batch_size']}) is not a multiple of "
            f"per_device_train_batch_size ({s['per_device_train_batch_size']}) x world size ({env.world_size})"
        )
    wandb_on = spec.wandb["enabled"] and spec.wandb.get("mode") != "disabled"
    kwargs: dict[str, Any] = dict(
        output_dir=str(Path(spec.staging_dir) / "checkpoints"),
        learning_rate=s["learning_rate"],
        lr_scheduler_type=s["lr_scheduler_type"],
        # transformers 5 reads a value below 1 as a fraction of the total steps
        warmup_steps=s["warmup_steps"] if s["warmup_steps"] > 0 else s["warmup_ratio"],
        num_train_epochs=s["num_train_epochs"],
        max_steps=s["max_steps"],
        per_device_train_batch_size=s["per_device_train_batch_size"],
        gradient_accumulation_steps=s["global_batch_size"] // per_step,
        weight_decay=s["weight_decay"],
        max_grad_norm=s["max_grad_norm"],
        seed=s["seed"],
        data_seed=s["seed"],
        logging_steps=s["logging_steps"],
        logging_first_step=True,
        # Step checkpoints only when asked; the stop signal and the wall-clock interval save
        # through the checkpoint callback (`checkpoint_callback`).
        save_strategy="steps" if s["save_steps"] > 0 else "no",
        save_steps=s["save_steps"] if s["save_steps"] > 0 else 500,
        save_total_limit=2,
        report_to=["wandb"] if wandb_on else [],
        run_name=f"{spec.wandb['group']}/{spec.name}",
        use_cpu=not env.cuda,
        bf16=env.bf16,
        fp16=False,
        deepspeed=deepspeed_config(spec.deepspeed),
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )
    kwargs.update(speed_kwargs(spec, env))
    # Always explicit: TRL's configs default to checkpointing on, so leaving it unset when
    # the user turned it off would still recompute every layer in the backward pass.
    kwargs["activation_checkpointing"] = bool(s["gradient_checkpointing"])
    if s["gradient_checkpointing"]:
        kwargs["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    return kwargs


def speed_kwargs(spec: StageSpec, env: Env) -> dict[str, Any]:
    """The speed options (config `speed`) as Trainer arguments, each choice printed once.

    `liger: on` where Liger cannot run is an error, never a silent drop; `auto` falls back
    with its reason. The choices are kept in `spec.speed["chosen"]` for the manifest."""
    import importlib.util

    options = spec.speed or {}
    chosen: dict[str, Any] = {}
    liger = options.get("liger", "auto")
    available = importlib.util.find_spec("liger_kernel") is not None
    missing = "" if available and env.cuda else ("no GPU here" if available else "liger-kernel is not installed")
    if liger == "on" and missing:
        raise ModelError(f"speed.liger=on, but Liger kernels need the liger-kernel package and a GPU ({missing}); "
                         f"set speed.liger=auto or off")
    use_liger = liger != "off" and not missing
    chosen["liger"] = "on" if use_liger else "off" if liger == "off" else f"off ({missing})"
    chosen["compile"] = bool(options.get("compile", False))
    chosen["tf32"] = bool(options.get("tf32", True)) and env.cuda
    if env.is_main:
        print("speed options: " + ", ".join(f"{k} {v}" for k, v in chosen.items()), flush=True)  # stage log
    spec.speed = {**options, "chosen": chosen}
    kwargs: dict[str, Any] = {"use_liger_kernel": use_liger, "torch_compile": chosen["compile"]}
    if env.cuda:
        kwargs["tf32"] = chosen["tf32"]
    return kwargs


def with_extra(kwargs: dict[str, Any], spec: StageSpec) -> dict[str, Any]:
    """Apply `stages.NAME.extra` last, so users can set any TRL option we do not model."""
    return {**kwargs, **spec.settings.get("extra", {})}


def load_tokenizer(path: str, spec: StageSpec):
    from transformers import AutoTokenizer

    loading = spec.model_loading
    return AutoTokenizer.from_pretrained(
        path, revision=spec.revisions.get(path), trust_remote_code=loading["trust_remote_code"]
    )


def load_model(path: str, spec: StageSpec, env: Env):
    """Load weights from safetensors only. Call after the TRL config exists (ZeRO-3 init)."""
    import torch
    from transformers import AutoModelForCausalLM

    loading = spec.model_loading
    # Under DeepSpeed the optimizer keeps an fp32 master copy of bf16 weights. Without it the
    # weights themselves must be fp32 (the Trainer then computes in bf16 autocast): AdamW on
    # bf16 weights at the paper's DPO rate of 5e-7 leaves 99% of them unchanged per step.
    dtype = torch.bfloat16 if env.bf16 and spec.deepspeed["enabled"] else torch.float32
    attn = attention.resolve(loading["attn_implementation"], env.cuda)
    if attn != loading["attn_implementation"] and env.is_main:
        print(f"hpcadapt: model.attn_implementation=auto: using {attn}", flush=True)
    extra: dict[str, Any] = {}
    if (adapter_settings(spec) or {}).get("method") == "qlora":
        extra["quantization_config"] = qlora_quantization(env)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        attn_implementation=attn,
        revision=spec.revisions.get(path),
        trust_remote_code=loading["trust_remote_code"],
        use_safetensors=True,
        **extra,
    )
    return model


def qlora_quantization(env: Env):
    """4-bit NF4 weights for QLoRA; bitsandbytes computes on CUDA only."""
    import importlib.util

    if not env.cuda:
        raise ModelError("peft.method=qlora loads the frozen weights in 4 bits with bitsandbytes, which needs a "
                         "GPU; this stage runs on the CPU. Use peft.method=lora here.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("peft.method=qlora needs the bitsandbytes package where the stage runs: pip install "
                         "bitsandbytes, or use peft.method=lora")
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def adapter_settings(spec: StageSpec) -> dict[str, Any] | None:
    """The stage's `peft` settings, or None when every weight trains (method none)."""
    settings = spec.settings.get("peft")
    return settings if settings and settings.get("method", "none") != "none" else None


def peft_config(spec: StageSpec):
    """The stage's adapter settings as a peft LoraConfig, or None for full-parameter training."""
    settings = adapter_settings(spec)
    if settings is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                      target_modules=settings["target_modules"], task_type="CAUSAL_LM")


def save_weights(trainer, out: Path, spec: StageSpec, env: Env) -> None:
    """The stage's model as a full Hugging Face folder in `out`.

    An adapter stage keeps its adapter in `out/adapter` and writes the weights merged with
    it (LoRA in place; QLoRA's 4-bit base is reloaded in 16 bits first, since rounding the
    merged weights to 4 bits would lose the update)."""
    adapter = adapter_settings(spec)
    if adapter is None:
        trainer.save_model(str(out))  # under ZeRO-3 this gathers the 16-bit weights on rank 0
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not env.is_main:
        return
    model.save_pretrained(str(out / "adapter"), safe_serialization=True)
    if adapter["method"] == "qlora":
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(spec.input_model, dtype=torch.bfloat16, use_safetensors=True,
                                                    revision=spec.revisions.get(spec.input_model))
        if base.get_input_embeddings().weight.shape[0] != model.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(model.get_input_embeddings().weight.shape[0])
        model = PeftModel.from_pretrained(base, str(out / "adapter"))
    model.merge_and_unload().save_pretrained(str(out), safe_serialization=True)


def reference_model(spec: StageSpec, env: Env, tokenizer):
    """DPO/KTO's frozen reference: with an adapter, TRL uses the policy with its adapter
    switched off (no second copy in memory); otherwise a model of its own."""
    return None if adapter_settings(spec) else load_reference_model(spec, env, tokenizer)


def load_reference_model(spec: StageSpec, env: Env, tokenizer):
    """The frozen reference of DPO/KTO: its own `from_pretrained`, in eval mode.

    Never a deep copy: under ZeRO-3 a copy of a partitioned model holds empty tensors.
    Its vocabulary follows the tokenizer's if a pad token was added to the policy.
    """
    ref = load_model(spec.input_model, spec, env).eval()
    if ref.get_input_embeddings().weight.shape[0] != len(tokenizer):
        ref.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return ref


def count_tokens(dataset) -> dict[str, int]:
    """Rows, tokens and (where labels exist) tokens under the loss, read column-wise from Arrow."""
    import pyarrow.compute as pc

    counts = {"rows": 0, "tokens": 0}
    for batch in dataset.with_format("arrow").iter(batch_size=10_000):
        counts["rows"] += batch.num_rows
        counts["tokens"] += pc.sum(pc.list_value_length(batch["input_ids"])).as_py() or 0
        if "labels" in batch.column_names:
            labels = pc.list_flatten(batch["labels"])
            trained = pc.sum(pc.not_equal(labels, -100).cast("int64")).as_py() or 0
            counts["loss_tokens"] = counts.get("loss_tokens", 0) + trained
    return counts


def length_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """ORPO/CPO take the completion's budget rather than the prompt's."""
    out: dict[str, Any] = {"max_length": settings["max_length"]}
    if settings["max_prompt_length"]:
        out["max_completion_length"] = settings["max_length"] - settings["max_prompt_length"]
    return out


def checkpoint_callback(every_minutes: float):
    """A Trainer callback that decides, at each step boundary, when to write a resumable checkpoint.

    - Once any rank was asked to stop (preemption or time limit): save and stop. All ranks
      must stop at the same step or the checkpoint would be torn, so the flags are reduced
      across ranks (a few microseconds on gloo, negligible on NCCL).
    - Every `every_minutes` of training since the last checkpoint (rank 0's clock decides).
    - Never at the last step: the trained model is saved right after, and a ZeRO-3
      checkpoint (weights, fp32 master copy, optimizer state) would be written for nothing.
    After every save, the checkpoint is sealed with its completion record (`seal_checkpoint`).
    Built here rather than at import so this module imports without transformers.
    """
    import time

    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback

    class CheckpointCallback(TrainerCallback):
        preempted = False
        last_save = time.monotonic()

        def on_save(self, args, state, control, **kwargs):
            seal_checkpoint(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            self.last_save = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            due = every_minutes > 0 and time.monotonic() - self.last_save >= 60 * every_minutes
            flags = [1.0 if stop_flag.stop_requested() else 0.0, 1.0 if due and state.is_world_process_zero else 0.0]
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
                t = torch.tensor(flags, device=device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                flags = t.tolist()
            stop, due = flags[0] > 0, flags[1] > 0
            if stop:
                self.preempted = True
                control.should_save = True
                control.should_training_stop = True
            elif state.global_step >= state.max_steps:
                control.should_save = False
            elif due:
                control.should_save = True
            return control

    return CheckpointCallback()


def progress_callback(spec: StageSpec):
    """A Trainer callback that prints one progress line (steps, tokens/s, ETA) every few seconds
    on rank 0; the local launcher shows it as a single redrawn line (hpcadapt/launch/processes.py)."""
    import time

    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        started = shown = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = self.shown = time.monotonic()
            self.first_step = state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            now = time.monotonic()
            if not state.is_world_process_zero or (now - self.shown < 3 and state.global_step < state.max_steps):
                return
            self.shown = now
            done = state.global_step - self.first_step
            rate = done / max(now - self.started, 1e-9)
            eta = (state.max_steps - state.global_step) / rate if rate else 0
            tokens = max((e.get("num_tokens", 0) for e in state.log_history), default=0)
            speed = f", {tokens / (now - self.started):,.0f} tokens/s" if tokens else ""
            percent = 100 * state.global_step // max(state.max_steps, 1)
            print(f"hpcadapt: progress {spec.name}: step {state.global_step}/{state.max_steps} ({percent}%){speed}, "
                  f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s", flush=True)

    return ProgressCallback()


def resume_checkpoint(spec: StageSpec, env: Env) -> str | None:
    """The newest complete, unchanged checkpoint of an interrupted attempt, checked against this world size.

    A checkpoint counts only with its completion record (`seal_checkpoint`, written after
    the save), every recorded file present at its size and sha256, nothing added, and the
    record's signature valid. Newer ones that fail are reported with the reason: one without
    a record (its save was interrupted: a kill, a full disk) is removed; one whose files
    changed after it was sealed is moved aside as `rejected-checkpoint-N` and nothing in it
    is loaded. All of this happens before the Trainer unpickles anything (DeepSpeed's
    `*_model_states.pt` / `*_optim_states.pt`, the optimizer, scheduler and RNG states).
    """
    staging = Path(spec.staging_dir)
    ckpt_root = staging / "checkpoints"
    record = staging / "world_size.json"
    last, skipped = None, []
    for folder in checkpoint_folders(ckpt_root):
        problem = checkpoint_problem(folder)
        if problem is None:
            problem = checkpoint_digest_problem(folder, env)
        if problem is None:
            last = folder
            break
        skipped.append((folder, problem))
    _barrier()
    if env.is_main:
        for folder, problem in skipped:
            print(f"hpcadapt: {spec.name}: {set_aside(folder, problem)}", flush=True)
    if last is not None:
        before = json.loads((last / CHECKPOINT_RECORD).read_text())["world_size"]
        if before != env.world_size:
            raise ModelError(
                f"stage {spec.name} has a checkpoint ({last}) written by {before} processes, but this run has "
                f"{env.world_size}. DeepSpeed checkpoints cannot be resumed on a different world size: run the stage "
                f"again with {before} processes (cluster.nprocs, or nodes x tasks_per_node on Slurm), or delete "
                f"{ckpt_root} to restart the stage from its input model."
            )
    if env.is_main:  # atomic: other ranks read this file at the same moment
        write_json_atomic(record, {"world_size": env.world_size})
    return str(last) if last is not None else None


CHECKPOINT_RECORD = "hpcadapt-checkpoint.json"  # a checkpoint's completion record, written last
# A checkpoint holds pickles, so a swapped file must be caught: a cryptographic digest.
CHECKPOINT_DIGEST = "sha256"


def checkpoint_folders(ckpt_root: Path) -> list[Path]:
    """`checkpoint-N` folders, newest (highest N) first."""
    import re

    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def seal_checkpoint(folder: Path) -> None:
    """Record a just-written checkpoint's files (size and sha256 of each), signed, as its last file.

    Called on every rank once the Trainer has written the checkpoint. Each rank digests a
    share of the files (the large ones spread over ranks), rank 0 writes the record
    atomically. Without the record the checkpoint is incomplete and never resumed from.
    """
    import time

    from hpcadapt.stagedir import folder_files, record_files

    rank, world = _rank_and_world()
    _barrier()  # every rank's files are written
    names = folder_files(folder, skip=(CHECKPOINT_RECORD,))
    files = record_files(folder, share_of(folder, names, rank, world), CHECKPOINT_DIGEST)
    for part in _gather(files):
        files.update(part)
    if rank == 0:
        body = {"checkpoint": folder.name, "world_size": world, "files": dict(sorted(files.items()))}
        write_json_atomic(folder / CHECKPOINT_RECORD,
                          {**body, "signature": sign(body), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    _barrier()


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, by what a directory listing and its record say
    (no file is read but the record); None if nothing is wrong so far."""
    from hpcadapt.stagedir import file_problem, folder_files

    record_path = folder / CHECKPOINT_RECORD
    if not record_path.is_file():
        return "incomplete: it has no completion record, so its save was interrupted (a kill, a full disk)"
    try:
        record = json.loads(record_path.read_text())
        body = {k: record[k] for k in ("checkpoint", "world_size", "files")}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return f"changed after it was written: {CHECKPOINT_RECORD} is not the record hpcadapt wrote"
    if body["checkpoint"] != folder.name:
        return f"changed after it was written: its record is {body['checkpoint']}'s"
    signed = signature_problem(body, record.get("signature"))
    if signed:
        return f"changed after it was written: {signed}"
    added = sorted(set(folder_files(folder, skip=(CHECKPOINT_RECORD,))) - set(body["files"]))
    if added:
        return f"changed after it was written: {added[0]} was not part of it"
    for rel, info in body["files"].items():
        problem = file_problem(folder, rel, info, full=False)
        if problem:
            return f"changed after it was written: {rel} {problem.replace('the manifest', 'its record')}"
    return None


def checkpoint_digest_problem(folder: Path, env: Env) -> str | None:
    """Every recorded file's sha256 against the record, the files shared out over the ranks; the
    first difference (the same answer on every rank), or None."""
    from hpcadapt.stagedir import file_problem

    rank, world = _rank_and_world()
    files = json.loads((folder / CHECKPOINT_RECORD).read_text())["files"]
    problems = []
    for rel in share_of(folder, sorted(files), rank, world):
        problem = file_problem(folder, rel, files[rel], full=True)
        if problem:
            problems.append(f"changed after it was written: {rel} {problem.replace('the manifest', 'its record')}")
    found = sorted(p for part in _gather(problems) for p in part)
    return found[0] if found else None


def set_aside(folder: Path, problem: str) -> str:
    """Remove an incomplete checkpoint (it frees the space a full disk needs back), or move a
    changed one aside for inspection; returns what was done, for the log."""
    import shutil
    import time

    if problem.startswith("incomplete"):
        shutil.rmtree(folder, ignore_errors=True)
        return f"skipped {folder.name}, {problem}; removed it"
    target = folder.with_name(f"rejected-{folder.name}")
    if target.exists():
        target = folder.with_name(f"rejected-{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    folder.rename(target)
    return (f"refused {folder.name}, {problem}; nothing in it was loaded, it was moved to {target} (delete it once "
            f"inspected)")


def share_of(folder: Path, names: list[str], rank: int, world: int) -> list[str]:
    """This rank's files of `names`: the largest first, each to the rank with the fewest bytes so far
    (the same answer on every rank, which all list the same folder)."""
    sizes = sorted(((folder / n).stat().st_size, n) for n in names)
    loads = [0] * world
    mine = []
    for size, name in reversed(sizes):
        owner = loads.index(min(loads))
        loads[owner] += size
        if owner == rank:
            mine.append(name)
    return sorted(mine)


def signing_key(create: bool) -> bytes | None:
    """This user's key for checkpoint records: `$HPCADAPT_KEY_FILE`, else ~/.config/hpcadapt/checkpoint.key
    (mode 0600, made on first use). Someone who can write the output folder but not read this
    file cannot forge a record for a swapped file. None if there is none and it cannot be made."""
    import secrets

    path = Path(os.environ.get("HPCADAPT_KEY_FILE") or Path.home() / ".config" / "hpcadapt" / "checkpoint.key")
    if create and not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)  # appears with its content, or another process's key stays
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        except OSError:
            return None
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return key or None


def sign(body: dict[str, Any]) -> str | None:
    import hashlib
    import hmac

    key = signing_key(create=True)
    if key is None:
        return None
    return "hmac-sha256:" + hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def signature_problem(body: dict[str, Any], signature: str | None) -> str | None:
    """Why a record's signature is not this user's (None if it is, or if neither has a key)."""
    import hmac

    key = signing_key(create=False)
    if signature is None:
        return "its record is not signed, but this user has a checkpoint key" if key else None
    if key is None:
        return "its record is signed, but this user has no checkpoint key to check it (another user's, or HOME differs)"
    if not hmac.compare_digest(signature, sign(body) or ""):
        return "its record's signature does not match (edited, or sealed with another user's key)"
    return None


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _gather(obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (just `[obj]` in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def explain_failed_save(error: BaseException, spec: StageSpec) -> None:
    """Raise WriteFailed if training stopped because a checkpoint could not be written (disk full,
    quota): the torn checkpoint is removed and the message names what the next run resumes from."""
    import shutil

    from hpcadapt.errors import WriteFailed, write_failure

    why = write_failure(error)
    if why is None:
        return
    ckpt_root = Path(spec.staging_dir) / "checkpoints"
    torn, intact = None, None
    for folder in checkpoint_folders(ckpt_root):
        if not (folder / CHECKPOINT_RECORD).is_file():
            torn = torn or folder
            shutil.rmtree(folder, ignore_errors=True)
        elif intact is None:
            intact = folder
    free = shutil.disk_usage(spec.staging_dir).free if Path(spec.staging_dir).exists() else 0
    what = f"writing {torn.name}" if torn else "a write during training"
    then = (f"{intact.name} is intact and the next run resumes from it" if intact else
            "there is no earlier checkpoint, so the next run starts the stage again from its input model")
    raise WriteFailed(f"stage {spec.name}: {what} in {ckpt_root} failed: {why} ({free / 2**20:,.0f} MiB free "
                      f"there now). The incomplete checkpoint was removed; {then}. Free space (or point output_root "
                      f"at a larger filesystem) and run the same command again.") from None


def train_and_save(trainer, tokenizer, spec: StageSpec, env: Env, notes: list[str]) -> dict[str, Any]:
    """Train (resuming if possible), save the complete model folder, verify, report."""
    import torch.distributed as dist

    record_partition(trainer.model, spec, env)
    preemption = checkpoint_callback(spec.settings.get("checkpoint_every_minutes", 0.0))
    trainer.add_callback(preemption)
    trainer.add_callback(progress_callback(spec))
    checkpoint = resume_checkpoint(spec, env)
    if checkpoint and env.is_main:
        print(f"hpcadapt: resuming {spec.name} from {checkpoint}", flush=True)
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except Exception as e:
        explain_failed_save(e, spec)
        raise
    if preemption.preempted:
        raise stop_flag.StagePreempted(f"stage {spec.name} stopped at step {trainer.state.global_step} on request")
    out = Path(spec.staging_dir)
    save_weights(trainer, out, spec, env)
    if env.is_main:
        tokenizer.save_pretrained(str(out))
        model = trainer.model
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.pad_token_id = tokenizer.pad_token_id
            gen.eos_token_id = stop_token_ids(gen, tokenizer)
            gen.save_pretrained(str(out))
        verify_saved(out, expected_parameters(trainer.model), spec)
        store_in_dtype(out, spec.model_loading["dtype"])
        write_history(trainer.state.log_history, out, spec.name)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    speed = measured_speed(trainer, result, spec, env)
    if env.is_main and speed.get("tokens_per_s_per_gpu"):
        mfu = f", MFU {speed['mfu']:.1%}" if speed.get("mfu") else ""
        print(
            f"{spec.name}: {speed['tokens_per_s_per_gpu']:,.0f} tokens/s per "
            f"{'GPU' if env.cuda else 'process'}{mfu}, peak memory {speed['peak_memory_gib']} GiB",
            flush=True,
        )
    return {
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "runtime_s": result.metrics.get("train_runtime"),
        "world_size": env.world_size,
        "attention": getattr(trainer.model.config, "_attn_implementation", None),
        "speed_options": spec.speed.get("chosen"),
        "speed": speed,
        "notes": notes,
    }


def stop_token_ids(generation_config, tokenizer) -> int | list[int]:
    """Every token generation must stop on: the model's own list (Llama 3.1 Instruct stops on
    `<|end_of_text|>`, `<|eom_id|>` and `<|eot_id|>`), the tokenizer's eos, and the end of
    turn of the chat template the model was trained with (a Base model tuned with its
    Instruct sibling's template ends replies with `<|eot_id|>`)."""
    from hpcadapt.conversation import turn_terminator

    known = generation_config.eos_token_id
    ids = list(known) if isinstance(known, (list, tuple)) else [known] if known is not None else []
    for extra in (tokenizer.eos_token_id, turn_terminator(tokenizer) if tokenizer.chat_template else None):
        if extra is not None and extra not in ids:
            ids.append(extra)
    return ids[0] if len(ids) == 1 else ids


def measured_speed(trainer, result, spec: StageSpec, env: Env) -> dict[str, Any]:
    """Tokens/s per GPU, MFU and peak memory of this run (hpcadapt/throughput.py)."""
    import resource

    import torch

    from hpcadapt.throughput import stage_throughput

    tokens = max((e.get("num_tokens", 0) for e in trainer.state.log_history), default=0)  # TRL counts all ranks
    device = torch.cuda.get_device_name() if env.cuda else "cpu"
    speed = stage_throughput(
        tokens,
        result.metrics.get("train_runtime"),
        env.world_size,
        trainer.model.config,
        expected_parameters(trainer.model),
        spec.settings["max_length"],
        device,
    )
    if env.cuda:
        speed["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:  # this process's peak resident memory
        speed["peak_memory_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return speed


def record_partition(model, spec: StageSpec, env: Env) -> None:
    """Write how many parameter elements this rank holds, to show ZeRO-3 really shards.

    Under ZeRO-3 each rank holds `ds_tensor`, a 1/world_size slice of every parameter;
    without it, every rank holds all of them. Kept in the stage's logs/ folder.
    """
    local = 0
    for p in model.parameters():
        shard = getattr(p, "ds_tensor", None)
        local += shard.numel() if shard is not None else p.numel()
    full = expected_parameters(model)
    logs = Path(spec.staging_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"partition_rank{env.rank}.json").write_text(
        json.dumps({"rank": env.rank, "world_size": env.world_size, "full_numel": full, "local_numel": local})
    )


def expected_parameters(model) -> int:
    """Full parameter count, also under ZeRO-3 where each rank holds only a shard.

    `parameters()` yields a tied (shared) tensor once, as safetensors stores it once.
    """
    return sum(getattr(p, "ds_numel", None) or p.numel() for p in model.parameters())


def saved_tensors(model_dir: Path) -> list[Any]:
    """The tensor entries (name, shape, bytes) of every safetensors file in the folder, read and
    checked from their headers only, by the merger's reader (the one safetensors header parser)."""
    from hpcadapt_merge.checkpoint import read_header

    return [info for f in sorted(model_dir.glob("*.safetensors")) for info in read_header(f).values()]


def saved_parameters(model_dir: Path) -> int:
    """Element count of every tensor in the folder's safetensors files."""
    return sum(info.numel for info in saved_tensors(model_dir))


def saved_bytes(model_dir: Path) -> int:
    """Bytes of tensor data in the folder's safetensors files (an index's `total_size`)."""
    return sum(info.nbytes for info in saved_tensors(model_dir))


def verify_saved(model_dir: Path, expected: int, spec: StageSpec) -> None:
    saved = saved_parameters(model_dir)
    if saved < expected:
        raise ModelError(
            f"stage {spec.name}: the saved weights in {model_dir} hold {saved:,} parameters but the model has "
            f"{expected:,}. Under ZeRO-3 set deepspeed.gather_16bit_weights_on_model_save=true, or consolidate "
            f"the checkpoint with DeepSpeed's zero_to_fp32."
        )


def store_in_dtype(model_dir: Path, dtype: str) -> None:
    """Store the saved weights in the model's configured dtype.

    A GPU run trains and saves bf16 weights; a CPU run computes in float32 and would save
    float32, so a CPU rehearsal would hand the merge a float32 parent beside the hub's
    bf16 Instruct model. Casting here makes every stage folder look as it will on the
    cluster. Only floating tensors are cast, shard by shard, each file replaced atomically.
    """
    import torch
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors = load_file(str(shard))
        if all(t.dtype == target or not t.is_floating_point() for t in tensors.values()):
            continue
        cast = {k: t.to(target) if t.is_floating_point() else t for k, t in tensors.items()}
        with replacing(shard) as tmp:
            save_file(cast, str(tmp), metadata={"format": "pt"})
    index_file = model_dir / "model.safetensors.index.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        index.setdefault("metadata", {})["total_size"] = saved_bytes(model_dir)
        write_json_atomic(index_file, index)
    config_file = model_dir / "config.json"
    config = json.loads(config_file.read_text())
    if config.get("dtype") != dtype:
        config["dtype"] = dtype
        write_json_atomic(config_file, config)


def write_history(history: list[dict[str, Any]], out: Path, name: str) -> None:
    """The Trainer's log as JSON plus a loss curve, in the stage folder."""
    (out / "train_log.json").write_text(json.dumps(history, indent=1))
    points = [(e["step"], e["loss"]) for e in history if "loss" in e]
    if len(points) < 2:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*points), marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{name}: training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)
