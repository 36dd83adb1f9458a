"""Checkpoints when needed and never at the last step; fp32 master weights; MFU arithmetic."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from spine_helpers import FAST, compose_cfg, write_toy_domain

from hpcadapt.launch.local import run_local
from hpcadapt.spec import StageSpec
from hpcadapt.throughput import flops_per_token, peak_tflops, stage_throughput
from hpcadapt.training import Env, load_model


@pytest.mark.slow
def test_no_checkpoint_at_the_last_step_and_one_per_interval(tmp_path):
    for root in ("default", "interval"):
        write_toy_domain(tmp_path / root)
    base = [*FAST, "wandb.enabled=false", "pipeline.chain=[cpt]", "stages.cpt.keep_checkpoints=true",
            "stages.cpt.max_steps=5"]
    plan = run_local(compose_cfg([f"output_root={tmp_path / 'default'}", *base]))  # an hour between checkpoints
    assert not list((plan.stage("cpt").stage_dir / "checkpoints").glob("checkpoint-*"))
    # An interval that has always passed: a checkpoint after every step but the last.
    plan = run_local(compose_cfg([f"output_root={tmp_path / 'interval'}", *base,
                                  "stages.cpt.checkpoint_every_minutes=1e-9"]))
    saved = sorted(p.name for p in (plan.stage("cpt").stage_dir / "checkpoints").glob("checkpoint-*"))
    assert saved == ["checkpoint-3", "checkpoint-4"]  # save_total_limit 2 of steps 1-4; none at step 5


def test_weights_stay_fp32_without_deepspeed_and_bf16_under_it(tmp_path):
    """bf16 AdamW updates on bf16 weights are lost below the weights' resolution; without
    DeepSpeed's fp32 master copy the weights themselves must be fp32 (bf16 autocast computes)."""
    import torch

    from hpcadapt.tiny import build_tiny_model_dir

    model_dir = build_tiny_model_dir(tmp_path / "m", ["some text"] * 20, vocab_size=300)
    bf16_env = Env(rank=0, world_size=1, cuda=False, bf16=True)
    def spec(deepspeed: bool) -> StageSpec:
        return StageSpec(name="cpt", kind="cpt", hash="0", pipeline="p", stage_dir="", staging_dir="", inputs={},
                         settings={}, deepspeed={"enabled": deepspeed},
                         model_loading={"dtype": "bfloat16", "attn_implementation": "sdpa", "trust_remote_code": False})

    plain = load_model(str(model_dir), spec(deepspeed=False), bf16_env)
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    zero = load_model(str(model_dir), spec(deepspeed=True), bf16_env)
    assert {p.dtype for p in zero.parameters()} == {torch.bfloat16}


def test_mfu_matches_a_hand_computation():
    # The 1.0B Llama measured on an H200: hidden 2048, 22 layers, vocabulary 9,476, untied.
    config = SimpleNamespace(vocab_size=9476, hidden_size=2048, num_hidden_layers=22, tie_word_embeddings=False)
    total = 1_000_000_000
    by_hand = 6 * (total - 9476 * 2048) + 12 * 22 * 2048 * 2048
    assert flops_per_token(config, total, 2048) == by_hand
    speed = stage_throughput(18_480 * 19.1, 19.1, 1, config, total, 2048, "NVIDIA H200")
    assert speed["tokens_per_s_per_gpu"] == 18_480.0
    assert speed["mfu"] == pytest.approx(by_hand * 18_480 / 989e12, abs=1e-4)
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312 and peak_tflops("cpu") is None
    assert peak_tflops("NVIDIA H100 80GB HBM3", given=700) == 700
    tied = SimpleNamespace(vocab_size=49152, hidden_size=2048, num_hidden_layers=24, tie_word_embeddings=True)
    assert flops_per_token(tied, total, 1) == 6 * total + 12 * 24 * 2048


def test_stage_manifest_records_speed(tmp_path):
    write_toy_domain(tmp_path)
    plan = run_local(compose_cfg([f"output_root={tmp_path}", *FAST, "wandb.enabled=false", "pipeline.chain=[cpt]"]))
    speed = json.loads((plan.stage("cpt").stage_dir / "manifest.json").read_text())["metrics"]["speed"]
    assert speed["tokens"] > 0 and speed["tokens_per_s_per_gpu"] > 0 and speed["mfu"] is None  # no peak for a CPU
    assert speed["peak_memory_gib"] > 0.1
