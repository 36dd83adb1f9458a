"""Every experiment composes, carries the paper's values, and bad settings fail by name."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hpcadapt_merge.schedule import PAPER_SLERP_T
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError
from spine_helpers import compose_cfg

from hpcadapt.config import ConfigError, validate

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose_cfg([], experiment)
    validate(cfg)
    assert cfg.pipeline.name == experiment
    for name in [*cfg.pipeline.prepare, *cfg.pipeline.chain]:
        assert name in cfg.stages


def test_required_experiments_exist():
    assert {"tiny_demo", "mistral_orpo_slerp", "llama_orpo_slerp", "mistral_sft_slerp", "smollm_dpo"} <= set(
        EXPERIMENTS
    )


def test_mistral_orpo_slerp_carries_the_papers_settings():
    cfg = compose_cfg([], "mistral_orpo_slerp")
    assert cfg.model.instruct == "mistralai/Mistral-7B-Instruct-v0.3"
    assert cfg.pipeline.start == "instruct" and list(cfg.pipeline.chain) == ["cpt", "sft", "orpo"]
    assert cfg.pipeline.merge
    orpo = cfg.stages.orpo
    assert (orpo.kind, orpo.learning_rate, orpo.beta, orpo.num_train_epochs) == ("orpo", 3e-6, 0.1, 3)
    assert orpo.global_batch_size == 64 and orpo.warmup_steps == 100
    cpt = cfg.stages.cpt
    assert (cpt.learning_rate, cpt.lr_scheduler_type, cpt.warmup_ratio) == (2e-5, "cosine", 0.1)
    assert (cpt.num_train_epochs, cpt.max_length, cpt.global_batch_size, cpt.packing) == (5, 3072, 192, True)
    assert cfg.deepspeed.stage == 3 and cfg.deepspeed.gather_16bit_weights_on_model_save
    assert cfg.merge.method == "slerp" and list(cfg.merge.t) == PAPER_SLERP_T


def test_other_paper_experiments():
    llama = compose_cfg([], "llama_orpo_slerp")
    assert (llama.stages.orpo.global_batch_size, llama.stages.orpo.num_train_epochs) == (24, 1)
    assert llama.stages.cpt.global_batch_size == 96
    sft_slerp = compose_cfg([], "mistral_sft_slerp")
    assert sft_slerp.pipeline.start == "base" and list(sft_slerp.pipeline.chain) == ["cpt", "sft"]
    assert sft_slerp.stages.cpt.global_batch_size == 384
    smol = compose_cfg([], "smollm_dpo")
    assert not smol.pipeline.merge and smol.stages.dpo.beta == 0.05 and smol.stages.dpo.learning_rate == 5e-7
    assert (smol.stages.cpt.learning_rate, smol.stages.cpt.lr_scheduler_type) == (5e-5, "constant")


def test_misspelt_key_fails_naming_it():
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["stages.cpt.lerning_rate=1e-5"])
    assert "lerning_rate" in str(err.value.__cause__ or err.value)


def test_wrong_type_fails_naming_the_key():
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_cfg(["stages.cpt.learning_rate=fast"])
    assert "learning_rate" in str(err.value.__cause__ or err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        (["stages.orpo.beta=null"], "stages.orpo.beta"),
        (["stages.cpt.data=nope"], "stages.cpt.data"),
        (["pipeline.start=middle"], "pipeline.start"),
        (["pipeline.chain=[cpt,nope]"], "nope"),
        (["cluster.kind=slurm", "cluster.gpus_per_node=4", "cluster.tasks_per_node=1"], "tasks_per_node"),
        (["data.mixes.cpt.sources=[{path: a.jsonl},{path: a.jsonl}]"], "repeats"),
        (["data.mixes.cpt.sources=[{path: a.jsonl, weight: 0}]"], "weight"),
    ],
)
def test_inconsistent_settings_fail_validation(override, message):
    cfg = compose_cfg(override)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(cfg)


def run_cli(*args: str, cwd: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpcadapt", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_cfg_job_prints_config_without_importing_torch():
    code = (
        "import sys, runpy; sys.argv=['hpcadapt', '+experiment=mistral_orpo_slerp', '--cfg', 'job'];\n"
        "try:\n    runpy.run_module('hpcadapt', run_name='__main__')\nexcept SystemExit: pass\n"
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "name: mistral_orpo_slerp" in out.stdout
    assert "NO_TORCH" in out.stdout


def test_cli_defaults_to_tiny_demo_and_rejects_unknown_names():
    started = time.time()
    out = run_cli("--cfg", "job")
    assert out.returncode == 0 and "name: tiny_demo" in out.stdout
    assert time.time() - started < 30
    bad = run_cli("+experiment=no_such_experiment")
    assert bad.returncode != 0 and "experiment/no_such_experiment" in bad.stderr
    bad_model = run_cli("model=no_such_model", "--cfg", "job")
    assert bad_model.returncode != 0 and "model/no_such_model" in bad_model.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--cfg", "job"],
        ["--cfg", "job", "cluster=site_example"],
        ["cluster=site_example", "--cfg", "job"],
        ["-m", "stages.cpt.learning_rate=1e-3,2e-3"],
    ],
)
def test_default_experiment_stays_with_the_overrides(argv):
    from hpcadapt.__main__ import with_default_experiment

    out = with_default_experiment(argv)
    assert "+experiment=tiny_demo" in out
    positions = [i for i, a in enumerate(out) if "=" in a and not a.startswith("-")]
    assert positions == list(range(positions[0], positions[0] + len(positions)))  # one contiguous run


def test_batch_arithmetic_checked_at_planning_for_stages_that_will_run(tmp_path):
    from spine_helpers import FAST, write_toy_domain

    from hpcadapt.plan import plan_pipeline

    write_toy_domain(tmp_path)
    cfg = compose_cfg([f"output_root={tmp_path}", *FAST, "cluster.nprocs=3"])
    with pytest.raises(ConfigError, match=r"stages\.base_pretrain\.global_batch_size \(8\) is not a multiple"):
        plan_pipeline(cfg)


def test_dry_run_and_status_print_the_plan_without_running(tmp_path):
    dry = run_cli(f"output_root={tmp_path}", "dry_run=true")
    assert dry.returncode == 0, dry.stderr
    for name in ("tiny_init", "base_pretrain", "instruct_sft", "cpt", "sft", "orpo", "merge", "eval"):
        assert name in dry.stdout
    assert dry.stdout.count("to run") == 8
    assert not list((tmp_path / "stages").glob("*-*")) if (tmp_path / "stages").exists() else True
    status = run_cli(f"output_root={tmp_path}", "status=true")
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("not run") == 8


def test_stage_folders_depend_on_data_content_not_location(tmp_path):
    """The same data under two output roots plans the same stage folders (so a chain run on
    Slurm and one run here are the same stages); a changed byte re-plans what reads it."""
    from spine_helpers import FAST, write_toy_domain

    from hpcadapt.plan import plan_pipeline

    def folders(root):
        plan = plan_pipeline(
            compose_cfg([f"output_root={root}", *FAST, "pipeline.merge=true", "pipeline.evaluate=true"])
        )
        return {s.name: s.stage_dir.name for s in plan.stages}

    for root in ("a", "b"):
        write_toy_domain(tmp_path / root)
    here, there = folders(tmp_path / "a"), folders(tmp_path / "b")
    assert here == there and len(here) == 8
    heldout = tmp_path / "b" / "demo_data" / "heldout_text.jsonl"
    heldout.write_text(heldout.read_text().replace("alloy", "metal"))
    changed = folders(tmp_path / "b")
    assert [n for n in here if here[n] != changed[n]] == ["eval"]


@pytest.mark.parametrize("setting", [False, True])
def test_gradient_checkpointing_setting_reaches_the_trainer(tmp_path, setting):
    """TRL's configs default checkpointing to on: turning it off must reach the trainer
    (else every layer is recomputed in the backward pass, ~25% of a tiny CPU step)."""
    from spine_helpers import write_toy_domain
    from trl import SFTConfig
    from trl.experimental.orpo import ORPOConfig

    from hpcadapt.plan import plan_pipeline
    from hpcadapt.training import Env, trainer_kwargs

    write_toy_domain(tmp_path)
    cfg = compose_cfg(
        [
            f"output_root={tmp_path}",
            f"stages.cpt.gradient_checkpointing={str(setting).lower()}",
            f"stages.orpo.gradient_checkpointing={str(setting).lower()}",
        ]
    )
    plan = plan_pipeline(cfg)
    env = Env(rank=0, world_size=1, cuda=False, bf16=False)
    for name, config_class in (("cpt", SFTConfig), ("orpo", ORPOConfig)):
        args = config_class(**trainer_kwargs(plan.stage(name).spec, env))
        assert args.activation_checkpointing is setting, name
        assert args.gradient_checkpointing is setting, name


SINGLE_PROCESS_SETUP = """
import os
from transformers import TrainingArguments
from hpcadapt.training import setup
from hpcadapt.spec import StageSpec
env = setup(StageSpec(name="cpt", kind="cpt", hash="0", pipeline="p", stage_dir="", staging_dir="", inputs={},
                      settings={}, model_loading={"dtype": "float32"}, deepspeed={"enabled": False}))
args = TrainingArguments(output_dir="unused", use_cpu=True, report_to=[])
print(env.rank, env.world_size, "LOCAL_RANK" in os.environ, args.distributed_state.distributed_type.name,
      args.parallel_mode.name)
"""


def test_single_process_stage_trains_without_a_process_group(tmp_path):
    """Our launchers set LOCAL_RANK even for one process; accelerate then starts gloo and
    wraps the model in DistributedDataParallel (13-20% slower on the tiny CPU model).
    setup() drops the rank variables for one process, so the Trainer runs undistributed.
    In a subprocess: accelerate's state is a process-wide singleton."""
    from hpcadapt.launch.processes import free_port, rank_env

    out = subprocess.run(
        [sys.executable, "-c", SINGLE_PROCESS_SETUP],
        env=rank_env(0, 1, port=free_port()),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-5:] == ["0", "1", "False", "NO", "NOT_PARALLEL"]
