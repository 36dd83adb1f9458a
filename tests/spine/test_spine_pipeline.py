"""The chain on real TRL trainers: every stage trains, its loss falls, and finished work is reused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from spine_helpers import FAST, compose_cfg, write_toy_domain

from hpcadapt.launch.local import run_local
from hpcadapt.plan import plan_pipeline
from hpcadapt.training import saved_parameters

pytestmark = pytest.mark.slow

LEARN = [
    "stages.base_pretrain.max_steps=20", "stages.base_pretrain.learning_rate=3e-3",
    "stages.base_pretrain.logging_steps=1", "stages.instruct_sft.logging_steps=1",
    "stages.instruct_sft.max_steps=15",
    "stages.cpt.max_steps=15", "stages.cpt.learning_rate=3e-3",
    "stages.sft.max_steps=15", "stages.sft.learning_rate=2e-3",
    "stages.orpo.max_steps=15", "stages.orpo.learning_rate=2e-3",
]
EXTRA_TRAINERS = [
    "+stage@stages.dpo=dpo", "stages.dpo.max_steps=15", "stages.dpo.learning_rate=2e-3", "stages.dpo.beta=0.1",
    "stages.dpo.global_batch_size=8", "stages.dpo.per_device_train_batch_size=8", "stages.dpo.max_length=128",
    "stages.dpo.gradient_checkpointing=false", "stages.dpo.logging_steps=1",
    "+stage@stages.kto=kto", "stages.kto.max_steps=4", "stages.kto.global_batch_size=8",
    "stages.kto.per_device_train_batch_size=8", "stages.kto.max_length=128", "stages.kto.gradient_checkpointing=false",
    "+stage@stages.simpo=simpo", "stages.simpo.max_steps=4", "stages.simpo.global_batch_size=8",
    "stages.simpo.per_device_train_batch_size=8", "stages.simpo.max_length=128",
    "stages.simpo.gradient_checkpointing=false",
]


def manifest(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    write_toy_domain(root)
    os.environ["HF_TOKEN"] = "hf_do_not_leak_123"  # must never reach a config, log or output
    main = run_local(compose_cfg([f"output_root={root}", *FAST, *LEARN]))
    more = run_local(compose_cfg([f"output_root={root}", *FAST, *LEARN, *EXTRA_TRAINERS,
                                  "pipeline.chain=[cpt,sft,dpo,kto,simpo]"]))
    os.environ.pop("HF_TOKEN")
    return root, main, more


def test_every_stage_completes_as_a_full_model_folder(trained):
    root, main, more = trained
    for plan in (main, more):
        for stage in plan.stages:
            d = stage.stage_dir
            assert manifest(d)["complete"] is True
            for f in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja",
                      "generation_config.json"):
                assert (d / f).is_file(), f"{stage.name}: {f} missing"
            assert not (d / "training_args.bin").exists() and not (d / "checkpoints").exists()
            config = json.loads((d / "config.json").read_text())
            hidden, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
            assert saved_parameters(d) > layers * 3 * hidden * inter  # at least the MLPs are really there
            gen = json.loads((d / "generation_config.json").read_text())
            assert gen["pad_token_id"] != gen["eos_token_id"]


@pytest.mark.parametrize("name", ["base_pretrain", "instruct_sft", "cpt", "sft", "orpo", "dpo"])
def test_loss_falls(trained, name):
    root, main, more = trained
    plan = main if name in [s.name for s in main.stages] else more
    metrics = manifest(plan.stage(name).stage_dir)["metrics"]
    history = json.loads((plan.stage(name).stage_dir / "train_log.json").read_text())
    losses = [e["loss"] for e in history if "loss" in e]
    assert metrics["steps"] >= 4 and len(losses) >= 3
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first * 0.97, f"{name}: loss {losses}"


def test_shared_prefix_is_reused_across_experiments(trained):
    root, main, more = trained
    for name in ("tiny_init", "base_pretrain", "instruct_sft", "cpt", "sft"):
        assert main.stage(name).stage_dir == more.stage(name).stage_dir


def test_rerun_skips_finished_stages(trained):
    root, main, _ = trained
    before = {s.name: (s.stage_dir / "manifest.json").stat().st_mtime_ns for s in main.stages}
    started = time.time()
    again = run_local(compose_cfg([f"output_root={root}", *FAST, *LEARN]))
    assert time.time() - started < 15  # nothing trained
    assert all(s.done for s in again.stages)
    assert before == {s.name: (s.stage_dir / "manifest.json").stat().st_mtime_ns for s in again.stages}


def test_changing_a_stage_invalidates_it_and_everything_after(trained):
    root, main, _ = trained
    changed = plan_pipeline(compose_cfg([f"output_root={root}", *FAST, *LEARN, "stages.sft.learning_rate=1e-3"]))
    same = {s.name for s in changed.stages if s.stage_dir == main.stage(s.name).stage_dir}
    assert same == {"tiny_init", "base_pretrain", "instruct_sft", "cpt"}
    assert not changed.stage("sft").done and not changed.stage("orpo").done
    # Logging settings do not change what a stage produces.
    cosmetic = plan_pipeline(compose_cfg([f"output_root={root}", *FAST, *LEARN, "stages.sft.logging_steps=7"]))
    assert all(s.done for s in cosmetic.stages)


def test_wandb_offline_runs_written_without_secrets(trained):
    root, main, _ = trained
    runs = sorted((root / "wandb").glob("offline-run-*"))
    names = " ".join(r.name for r in runs)
    for stage in ("base_pretrain", "cpt", "sft", "orpo"):
        assert f"-{stage}-" in names
    record = next(next(r.glob("run-*.wandb")) for r in runs if "-cpt-" in r.name).read_bytes()
    assert b"learning_rate" in record  # the resolved config
    assert main.run_dir.name.encode() in record  # the group: one per pipeline run
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert b"hf_do_not_leak_123" not in path.read_bytes(), path


def test_killed_stage_never_looks_finished_and_resumes(tmp_path):
    write_toy_domain(tmp_path)
    args = [f"output_root={tmp_path}", *FAST, "pipeline.chain=[cpt]", "stages.cpt.max_steps=120",
            "stages.cpt.save_steps=10", "stages.cpt.per_device_train_batch_size=1", "wandb.enabled=false"]
    plan = plan_pipeline(compose_cfg(args))
    run_local(compose_cfg([*args, "pipeline.chain=[]"]))  # build the prefix first
    proc = subprocess.Popen([sys.executable, "-m", "hpcadapt", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    staging = plan.stage("cpt").spec_path.parent
    deadline = time.time() + 240
    while not list(staging.glob("checkpoints/checkpoint-*/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(staging.glob("checkpoints/checkpoint-*")), "no checkpoint was written before the kill"
    assert not plan.stage("cpt").stage_dir.exists()
    # The same command resumes from the newest checkpoint and finishes.
    done = run_local(compose_cfg(args))
    final = done.stage("cpt").stage_dir
    assert manifest(final)["complete"] and manifest(final)["metrics"]["steps"] == 120
    assert "hpcadapt: resuming cpt from" in (final / "logs" / "rank0.log").read_text()
