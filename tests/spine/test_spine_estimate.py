"""Estimates before launch (hpcadapt/estimate.py): memory per GPU against what tensors hold and
against a hand computation, a stage that cannot fit refused with a change that fits, and the
Slurm time limit that a time estimate sets.

Run as a script (`python test_spine_estimate.py SPEC OUT PORT`), this file trains one step of a
stage in its own process and writes the bytes its tensors hold after the optimizer step.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

GIB = 2**30
# Llama-3.1-8B's shape.
LLAMA_8B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "tie_word_embeddings": False}


def fake_model_folder(folder: Path, config: dict) -> Path:
    """A model folder as planning sees it: config.json, tokenizer files, a weights file (never loaded)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (folder / "model.safetensors").write_bytes(b"0")
    return folder


def test_seven_billion_llama_matches_a_hand_computation():
    from hpcadapt.estimate import ModelShape, TrainingSetup, estimate_memory

    shape = ModelShape.from_config(LLAMA_8B)
    layer = (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096  # q, k, v, o
             + 3 * 4096 * 14336                              # gate, up, down
             + 2 * 4096)                                     # two RMS norms
    n = 32 * layer + 2 * 128256 * 4096 + 4096               # embedding, lm_head, final norm
    assert n == 8_030_261_248 == shape.parameters

    zero3 = estimate_memory(shape, TrainingSetup(world_size=8, micro_batch=1, max_length=2048, global_batch=64,
                                                 zero_stage=3, half=True)).parts
    assert zero3["weights"] == 2 * n // 8 == 2_007_565_312  # bf16, sharded over 8
    assert zero3["gradients"] == 2 * n // 8 == 2_007_565_312
    assert zero3["optimizer"] == 12 * n // 8 == 12_045_391_872  # fp32 master + two Adam moments, sharded

    plain = estimate_memory(shape, TrainingSetup(world_size=1, micro_batch=1, max_length=2048, global_batch=64,
                                                 zero_stage=None, half=True)).parts
    assert plain["weights"] == 4 * n == 32_121_044_992  # fp32 master weights, bf16 autocast
    assert plain["gradients"] == 4 * n
    assert plain["optimizer"] == 8 * n == 64_242_089_984
    assert plain["reference model"] == 0

    # DPO holds a reference model (sharded like the policy under ZeRO-3); a LoRA adapter trains alone.
    dpo = estimate_memory(shape, TrainingSetup(world_size=8, micro_batch=1, max_length=2048, global_batch=64,
                                               zero_stage=3, sequences=2, reference=True)).parts
    assert dpo["reference model"] == 2 * n // 8 and dpo["activations"] == 2 * zero3["activations"]
    lora = estimate_memory(shape, TrainingSetup(world_size=1, micro_batch=1, max_length=2048, global_batch=64,
                                                zero_stage=2, adapter="lora", lora_r=16)).parts
    adapter = 32 * 16 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 14336) + (14336 + 4096))
    assert lora["gradients"] == 2 * adapter and lora["optimizer"] == 12 * adapter
    assert lora["weights"] == 2 * n + 2 * adapter


def test_time_limit_arithmetic():
    from hpcadapt.estimate import TrainingSetup, estimate_seconds, time_limit_min, tokens_per_step

    setup = TrainingSetup(world_size=8, micro_batch=4, max_length=3072, global_batch=192)
    assert tokens_per_step(setup) == 192 * 3072
    seconds = estimate_seconds(1000, setup, 2000.0)
    assert seconds == 1000 * 192 * 3072 / (2000 * 8)
    assert time_limit_min(seconds, 2880) == math.ceil(1.5 * seconds / 60 + 15)
    assert time_limit_min(60, 2880) == 30  # the floor
    assert time_limit_min(seconds, 60) == 60  # the cap
    dpo = TrainingSetup(world_size=8, micro_batch=1, max_length=2048, global_batch=64, sequences=2, reference=True)
    assert estimate_seconds(10, dpo, 1000.0) == pytest.approx(10 * 64 * 2048 * 2 * 4 / 3 / 8000)


def test_stage_that_cannot_fit_fails_in_dry_run_with_a_suggestion(tmp_path):
    from spine_helpers import compose_cfg, write_toy_domain

    from hpcadapt.estimate import DoesNotFit
    from hpcadapt.launch.local import run_local

    write_toy_domain(tmp_path)
    model = fake_model_folder(tmp_path / "llama8b", LLAMA_8B)
    base = [f"output_root={tmp_path}", "data.generate=null", f"model.base={model}", f"model.instruct={model}",
            "model.dtype=bfloat16", "pipeline.prepare=[]", "pipeline.chain=[cpt]", "pipeline.merge=false",
            "pipeline.evaluate=false", "wandb.enabled=false", "dry_run=true", "cluster.gpu_memory_gb=24",
            "stages.cpt.per_device_train_batch_size=1", "stages.cpt.global_batch_size=64",
            "stages.cpt.max_length=2048", "stages.cpt.gradient_checkpointing=true"]
    with pytest.raises(DoesNotFit) as failed:
        run_local(compose_cfg([*base, "deepspeed=none"]))
    message = str(failed.value)
    assert "stage 'cpt' will not fit in GPU memory" in message and "cluster.gpu_memory_gb is 24" in message
    assert re.search(r"weights 29\.9, gradients 29\.9, optimizer 59\.8", message), message  # 4N, 4N, 8N in GiB
    assert "deepspeed=zero3 cluster.nprocs=16" in message, message
    assert not (tmp_path / "stages").exists(), "nothing may be written or run before the check"

    # The suggestion fits; planning, estimates included, imports no torch (it runs on login nodes).
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpcadapt", "+experiment=tiny_demo", *base,
                           "deepspeed=zero3", "cluster.nprocs=16"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checked against cluster.gpu_memory_gb=24" in proc.stdout
    used = float(re.search(r"memory ([\d.]+) GiB per GPU of 24", proc.stdout).group(1))
    assert 8 < used <= 24
    assert not re.search(r"\|\s+torch$", proc.stderr, re.M), "planning imported torch"
    assert not (tmp_path / "stages").exists()


def test_unreachable_model_config_skips_the_estimate_with_a_reason(tmp_path, monkeypatch):
    from hpcadapt.estimate import config_folder

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, why = config_folder("some-org/some-model", {"some-org/some-model": "a" * 40})
    assert folder is None and "not in the hub cache" in why
    snapshot = tmp_path / "hf" / "hub" / "models--some-org--some-model" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(LLAMA_8B))
    assert config_folder("some-org/some-model", {"some-org/some-model": "a" * 40})[0] == snapshot


def test_measured_throughput_comes_from_a_finished_stage_of_the_same_kind(tmp_path):
    from hpcadapt.estimate import known_speeds

    def stage(name: str, kind: str, speed: float | None, done: bool = True):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(
            {"metrics": {"speed": {"tokens_per_s_per_gpu": speed, "device": "NVIDIA H200"}}}))
        return SimpleNamespace(plan=SimpleNamespace(name=name, kind=kind, done=done, stage_dir=folder))

    graph = SimpleNamespace(ordered=[stage("cpt", "cpt", 5000.0), stage("sft", "sft", 4000.0),
                                     stage("orpo", "orpo", None)])
    cfg = SimpleNamespace(cluster=SimpleNamespace(tokens_per_s_per_gpu=None))
    speeds = known_speeds(graph, cfg)
    assert speeds["sft"][0] == 4000.0 and speeds["*"][0] == 5000.0 and "orpo" not in speeds
    assert "measured by stage sft on NVIDIA H200" == speeds["sft"][1]
    cfg.cluster.tokens_per_s_per_gpu = 1234
    assert known_speeds(graph, cfg) == {"*": (1234.0, "cluster.tokens_per_s_per_gpu")}


def test_dry_run_sbatch_script_carries_the_time_limit_from_tokens_per_second(tmp_path, capsys):
    from spine_helpers import FAST, compose_cfg, write_toy_domain

    from hpcadapt.launch.prepare import graph_name, prepare
    from hpcadapt.launch.slurm_submit import submit_graph

    write_toy_domain(tmp_path)
    cfg = compose_cfg([f"output_root={tmp_path}", *FAST, "wandb.enabled=false", "pipeline.chain=[cpt]",
                       "cluster=local_slurm", "dry_run=true", "cluster.tokens_per_s_per_gpu=4",
                       "+cluster.stage_timeout_min.instruct_sft=45"])
    submit_graph(prepare([cfg], graph_name(cfg)))
    out = capsys.readouterr().out
    scripts = dict(re.findall(r"# ---- sbatch script for stage (\w+) ----\n(.*?)(?=\n# ----|\Z)", out, re.S))
    # cpt: 6 steps x 8 rows x 128 tokens at 4 tokens/s on 1 process = 1,536 s; 1.5 x 25.6 min + 15 = 53.4.
    assert "#SBATCH --time=54\n" in scripts["cpt"], scripts["cpt"]
    assert "Slurm time limit 54 min" in out
    assert "#SBATCH --time=45\n" in scripts["instruct_sft"]  # fixed by cluster.stage_timeout_min
    assert "#SBATCH --time=60\n" in scripts["tiny_init"]  # not a training stage: cluster.timeout_min


def test_memory_estimate_matches_what_tensors_hold_after_a_step(tmp_path):
    """One step of a tiny CPT stage without DeepSpeed and under ZeRO-3 (world size 1, gloo), each in
    its own process: weights, gradients and optimizer state as the estimate says, within 30%."""
    from spine_helpers import compose_cfg, write_toy_domain

    from hpcadapt.demo.tiny import TinyShape, build_tiny_model_dir
    from hpcadapt.launch.prepare import prepare
    from hpcadapt.plan import write_specs

    model = build_tiny_model_dir(tmp_path / "model", ["the cat sat on the mat near the door"] * 50, vocab_size=400,
                                 shape=TinyShape(hidden_size=128, intermediate_size=352, num_hidden_layers=2))
    runs = {}
    for port, deepspeed in zip((29541, 29542), ("none", "zero3")):
        root = tmp_path / deepspeed
        write_toy_domain(root)
        prepared = prepare([compose_cfg([
            f"output_root={root}", "data.generate=null", f"model.base={model}", f"model.instruct={model}",
            "pipeline.prepare=[]", "pipeline.chain=[cpt]", "pipeline.merge=false", "pipeline.evaluate=false",
            f"deepspeed={deepspeed}", "stages.cpt.max_steps=1", "wandb.enabled=false"])], "estimate")
        write_specs(prepared.graph.pipelines[0])
        stage = prepared.graph.pipelines[0].stage("cpt")
        child = subprocess.Popen([sys.executable, __file__, str(stage.spec_path), str(root / "held.json"), str(port)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        runs[deepspeed] = (prepared.estimates[stage.stage_dir], child, root / "held.json")
    for deepspeed, (estimate, child, held_file) in runs.items():
        output = child.communicate(timeout=240)[0]
        assert child.returncode == 0, output[-3000:]
        held = json.loads(held_file.read_text())
        parts = estimate.memory.parts
        # The model's parameters are exactly the estimate's weights: fp32 on a CPU, all on the one rank.
        assert held["weights"] == parts["weights"], (deepspeed, held, parts)
        states = parts["weights"] + parts["gradients"] + parts["optimizer"]
        measured = sum(held.values())
        assert abs(measured - states) <= 0.3 * states, (deepspeed, held, parts)


def held_bytes(trainer) -> dict[str, int]:
    """Bytes of every live tensor storage, each once: the model's parameters (ZeRO-3: the rank's
    partitions), their gradients, and everything else (optimizer state, DeepSpeed's buffers)."""
    import gc

    import torch

    seen: dict[int, tuple[int, str]] = {}

    def add(tensor, what: str) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        if storage.data_ptr() and storage.data_ptr() not in seen:
            seen[storage.data_ptr()] = (storage.nbytes(), what)

    for p in trainer.model.parameters():
        add(getattr(p, "ds_tensor", None), "weights")
        add(p.data, "weights")
        add(p.grad, "gradients")
    for obj in gc.get_objects():
        try:
            add(obj, "other")
        except ReferenceError:
            continue
    out: dict[str, int] = {}
    for size, what in seen.values():
        out[what] = out.get(what, 0) + size
    return out


def run_one_step(spec_path: str, out: str, port: str) -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    import importlib

    from transformers import TrainerCallback

    from hpcadapt import training
    from hpcadapt.spec import StageSpec
    from hpcadapt.stages import kinds

    spec = StageSpec.read(spec_path)
    Path(spec.staging_dir).mkdir(parents=True, exist_ok=True)
    held: dict[str, int] = {}

    class Count(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):  # after the step, before zero_grad
            if not held:
                held.update(held_bytes(self.trainer))

    def train_only(trainer, tokenizer, spec, env, notes):
        counter = Count()
        counter.trainer = trainer
        trainer.add_callback(counter)
        trainer.train()
        return {}

    training.train_and_save = train_only
    importlib.import_module(kinds.get(spec.kind).recipe).run(spec)
    Path(out).write_text(json.dumps(held))


if __name__ == "__main__":
    run_one_step(*sys.argv[1:4])
