"""What the real path needs is checked before any job: attention kernel, data origins, hub pins,
the jobs' Python and resources per stage kind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from spine_helpers import FAST, compose_cfg, write_toy_domain

from hpcadapt import hub
from hpcadapt.config import ClusterConfig, OneTaskResources
from hpcadapt.errors import HpcadaptError
from hpcadapt.launch import job_env
from hpcadapt.launch.local import run_local
from hpcadapt.launch.prepare import prepare_data
from hpcadapt.launch.slurm_submit import job_python, make_executor, sbatch_script
from hpcadapt.plan import plan_pipeline


def test_flash_attention_missing_is_refused_before_anything_runs(tmp_path):
    write_toy_domain(tmp_path)
    cfg = compose_cfg([f"output_root={tmp_path}", *FAST, "model.attn_implementation=flash_attention_2"])
    with pytest.raises(HpcadaptError, match=r"'flash_attn' package.*model\.attn_implementation=sdpa"):
        run_local(cfg)
    assert not list(tmp_path.glob("stages/*/manifest.json"))


def test_attention_kernel_is_not_part_of_the_stage_hash(tmp_path):
    write_toy_domain(tmp_path)
    plans = [plan_pipeline(compose_cfg([f"output_root={tmp_path}", *FAST, f"model.attn_implementation={impl}"]))
             for impl in ("sdpa", "auto", "eager")]
    folders = [[s.stage_dir for s in p.stages] for p in plans]
    assert folders[0] == folders[1] == folders[2]


def test_the_papers_experiments_name_their_data_origin_when_files_are_missing(tmp_path):
    cfg = compose_cfg([f"output_root={tmp_path}", f"data_root={tmp_path / 'data'}"], experiment="mistral_orpo_slerp")
    with pytest.raises(HpcadaptError, match=r"comes from the hub dataset lamm-mit/bio-silk-mech-mix-80K.*"
                                            r"python -m hpcadapt\.data fetch"):
        plan_pipeline(cfg)


def test_fetch_offline_prints_what_it_would_download(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hpcadapt.data", "fetch", "+experiment=mistral_orpo_slerp",
                          f"data_root={tmp_path}"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    for dataset in ("lamm-mit/bio-silk-mech-mix-80K", "HuggingFaceH4/ultrachat_200k", "mlabonne/orpo-dpo-mix-40k"):
        assert dataset in out.stdout
    assert "3 file(s)" not in out.stdout and "4 file(s) would be fetched" in out.stdout
    assert not any(tmp_path.iterdir())


def test_fetch_converts_implicit_prompts_and_renames_fields():
    import datasets

    from hpcadapt.data.fetch import convert_rows

    user = {"role": "user", "content": "Strongest silk?"}
    raw = datasets.Dataset.from_list([
        {"chosen": [user, {"role": "assistant", "content": "Dragline."}],
         "rejected": [user, {"role": "assistant", "content": "Cotton."}], "prompt": "Strongest silk?", "source": "x"},
        {"chosen": [user, {"role": "assistant", "content": "A"}],
         "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "B"}],
         "prompt": "?", "source": "x"},
    ])
    rows = convert_rows(raw, {"id": "org/prefs", "convert": "implicit_prompt"}, ("prompt", "chosen", "rejected"))
    assert rows.to_list() == [{"prompt": [user], "chosen": [{"role": "assistant", "content": "Dragline."}],
                               "rejected": [{"role": "assistant", "content": "Cotton."}]}]
    texts = datasets.Dataset.from_list([{"abstract": "Silk is a protein.", "year": 2020}])
    assert convert_rows(texts, {"id": "org/papers", "fields": {"text": "abstract"}}, ("text",)).to_list() == [
        {"text": "Silk is a protein."}]


def fake_hub_cache(cache: Path, repo_id: str, model_dir: Path, sha: str) -> None:
    """A Hugging Face cache holding `model_dir` as `repo_id` at commit `sha`, as a download leaves it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(model_dir, repo / "snapshots" / sha)


def test_hub_models_are_pinned_to_a_commit_that_enters_the_stage_hash(tmp_path, monkeypatch):
    from hpcadapt.demo.tiny import build_tiny_model_dir

    write_toy_domain(tmp_path)
    model = build_tiny_model_dir(tmp_path / "tiny", ["Varnite is a red alloy."] * 30, vocab_size=300)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [f"output_root={tmp_path}", *FAST, "pipeline.prepare=[]", "model.base=acme/tiny-base",
            "model.instruct=acme/tiny", "pipeline.chain=[cpt]"]
    with pytest.raises(HpcadaptError, match=r"model\.instruct_revision: hub model acme/tiny is not pinned"):
        plan_pipeline(compose_cfg(args))
    fake_hub_cache(tmp_path / "hub", "acme/tiny", model, "a" * 40)
    first = plan_pipeline(compose_cfg(args))
    assert first.stage("cpt").spec.inputs["model"] == f"hub:acme/tiny@{'a' * 40}"
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("b" * 40)  # upstream moved on
    moved = plan_pipeline(compose_cfg(args))
    assert moved.stage("cpt").stage_dir != first.stage("cpt").stage_dir
    pinned = plan_pipeline(compose_cfg([*args, f"model.instruct_revision={'a' * 40}"]))
    assert pinned.stage("cpt").stage_dir == first.stage("cpt").stage_dir
    assert hub.local_model("acme/tiny", {"acme/tiny": "a" * 40}).endswith("a" * 40)


def test_one_task_stages_get_their_own_resources_not_the_training_ones(tmp_path):
    cluster = OmegaConf.structured(ClusterConfig(
        kind="slurm", partition="gpu", nodes=2, gpus_per_node=8, tasks_per_node=8, mem_gb=900,
        additional_parameters={"exclusive": True, "constraint": "h100"},
        merge=OneTaskResources(gpus=0, cpus_per_task=16, mem_gb=64), eval=OneTaskResources(gpus=1, mem_gb=64)))
    scripts = {kind: sbatch_script(make_executor(cluster, tmp_path / kind, f"x.{kind}", nprocs=n,
                                                 dependency_job_ids=[], snapshot=None, kind=kind))
               for kind, n in (("cpt", 16), ("merge", 1), ("eval", 1))}
    assert "--gpus-per-node=8" in scripts["cpt"] and "--exclusive" in scripts["cpt"] and "--mem=900GB" in scripts["cpt"]
    assert "--gpus" not in scripts["merge"] and "--exclusive" not in scripts["merge"]
    assert "--mem=64GB" in scripts["merge"] and "--cpus-per-task=16" in scripts["merge"]
    assert "--gpus-per-node=1" in scripts["eval"] and "--exclusive" not in scripts["eval"]
    assert all("--partition=gpu" in s for s in scripts.values())


def test_jobs_run_the_python_that_the_setup_lines_provide(tmp_path):
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    fake = venv / "python3"  # an interpreter that cannot import the training stack
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")
    fake.chmod(0o755)
    cluster = OmegaConf.structured(ClusterConfig(kind="slurm", setup=[f"export PATH={venv}:$PATH"]))
    assert job_python(cluster) == "python3"
    assert "python3 -u -m submitit" in sbatch_script(make_executor(cluster, tmp_path / "j", "x", 1, [], None))
    with pytest.raises(HpcadaptError, match=r"cannot import torch, transformers"):
        job_env.check_job_environment(cluster, "sdpa", trains=True)
    plain = OmegaConf.structured(ClusterConfig(kind="slurm"))
    assert job_python(plain) == sys.executable
    found = job_env.check_job_environment(plain, "sdpa", trains=True)
    assert found.python == sys.executable
    with pytest.raises(HpcadaptError, match=r"'flash_attn' package.*by the jobs' Python"):
        job_env.check_job_environment(plain, "flash_attention_2", trains=True)


def test_rehearsal_caps_sizes_and_steps_and_keeps_everything_else(tmp_path):
    full = compose_cfg([f"output_root={tmp_path}"], experiment="mistral_orpo_slerp")
    rehearsal = compose_cfg([f"output_root={tmp_path}", "scale=rehearsal"], experiment="mistral_orpo_slerp")
    prepare_data(rehearsal)
    plan = plan_pipeline(rehearsal)
    orpo = plan.stage("orpo").spec.settings
    assert (orpo["max_steps"], orpo["max_length"], orpo["global_batch_size"]) == (4, 256, 4)
    assert orpo["max_prompt_length"] == 1536 * 256 // 3072 and orpo["warmup_steps"] == 1
    for key in ("learning_rate", "beta", "lr_scheduler_type", "num_train_epochs"):
        assert orpo[key] == full.stages.orpo[key]
    assert plan.stage("cpt").spec.settings["packing"] is True
    assert plan.stage("merge").spec.settings["t"] == OmegaConf.to_container(full.merge.t)
    assert [s.name for s in plan.stages] == ["cpt", "sft", "orpo", "merge", "eval"]
    assert [s["weight"] for s in plan.stage("sft").spec.data_sources] == [0.5, 1.0]
    config = json.loads((Path(rehearsal.model.instruct) / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"] and config["vocab_size"] == 32768


def test_hub_datasets_must_be_pinned_or_cached(tmp_path, monkeypatch):
    write_toy_domain(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [f"output_root={tmp_path}", *FAST, "data.mixes.cpt.sources=[{path: acme/papers}]"]
    with pytest.raises(HpcadaptError, match=r"data\.mixes\.cpt\.sources\[0\]\.revision: hub dataset acme/papers is "
                                            r"not pinned"):
        plan_pipeline(compose_cfg(args))
    source = f"{{path: acme/papers, revision: {'c' * 40}}}"
    with pytest.raises(HpcadaptError, match=r"hub dataset acme/papers@cccccccccccc is not in the local cache .* "
                                            r"Prefetch it"):
        plan_pipeline(compose_cfg([*args[:-1], f"data.mixes.cpt.sources=[{source}]"]))
    (tmp_path / "hub" / "datasets--acme--papers" / "snapshots" / ("c" * 40)).mkdir(parents=True)  # prefetched
    pinned = plan_pipeline(compose_cfg([*args[:-1], f"data.mixes.cpt.sources=[{source}]"]))
    assert pinned.stage("cpt").spec.inputs["data"][0]["identity"] == f"hub:acme/papers@{'c' * 40}"
