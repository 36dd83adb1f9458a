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

    from hpcadapt.demo.tiny import build_tiny_model_dir

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


def test_speed_options_are_recorded_fall_back_with_a_reason_and_stay_out_of_the_hash(tmp_path):
    from hpcadapt.errors import ModelError
    from hpcadapt.plan import plan_pipeline
    from hpcadapt.training import speed_kwargs

    cpu = Env(rank=0, world_size=1, cuda=False, bf16=False)

    def spec(**speed) -> StageSpec:
        return StageSpec(name="cpt", kind="cpt", hash="0", pipeline="p", stage_dir="", staging_dir="", inputs={},
                         settings={}, model_loading={}, speed=speed)

    auto = spec(liger="auto", compile=False, tf32=True)
    kwargs = speed_kwargs(auto, cpu)
    assert kwargs == {"use_liger_kernel": False, "torch_compile": False}
    assert auto.speed["chosen"] == {"liger": "off (liger-kernel is not installed)", "compile": False, "tf32": False}
    with pytest.raises(ModelError, match=r"speed\.liger=on, but .*liger-kernel is not installed"):
        speed_kwargs(spec(liger="on"), cpu)
    write_toy_domain(tmp_path)
    folders = [[s.stage_dir for s in plan_pipeline(compose_cfg([f"output_root={tmp_path}", *FAST, *extra])).stages]
               for extra in ([], ["speed.liger=off", "speed.compile=true", "speed.tf32=false"])]
    assert folders[0] == folders[1]


@pytest.mark.slow
def test_lora_stage_merges_into_full_weights_that_feed_the_next_stage_and_the_merge(tmp_path):
    import torch
    from safetensors.torch import load_file

    from hpcadapt.training import saved_parameters

    write_toy_domain(tmp_path)
    lora = ["stages.cpt.peft.method=lora", "stages.cpt.peft.r=4", "stages.cpt.peft.alpha=8",
            "stages.cpt.peft.dropout=0", "stages.cpt.peft.target_modules=[q_proj,v_proj]"]
    plan = run_local(compose_cfg([f"output_root={tmp_path}", *FAST, "wandb.enabled=false", *lora,
                                  "stages.cpt.learning_rate=1e-2", "pipeline.chain=[cpt,sft]", "pipeline.merge=true"]))
    cpt, before = plan.stage("cpt").stage_dir, plan.stage("instruct_sft").stage_dir
    assert (cpt / "adapter" / "adapter_config.json").is_file()
    assert (cpt / "adapter" / "adapter_model.safetensors").is_file()
    assert saved_parameters(cpt) == saved_parameters(before)  # full weights, no adapter tensors among them
    new, old = load_file(str(cpt / "model.safetensors")), load_file(str(before / "model.safetensors"))
    assert new.keys() == old.keys()
    changed = [k for k in new if not torch.equal(new[k], old[k])]
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)  # only what the adapter touched
    assert json.loads((plan.stage("merge").stage_dir / "manifest.json").read_text())["complete"]
    assert json.loads((plan.stage("sft").stage_dir / "manifest.json").read_text())["settings"].get("peft") is None


def test_qlora_is_refused_without_a_gpu():
    from hpcadapt.errors import ModelError
    from hpcadapt.training import qlora_quantization

    with pytest.raises(ModelError, match="qlora .* needs a GPU; this stage runs on the CPU"):
        qlora_quantization(Env(rank=0, world_size=1, cuda=False, bf16=False))
