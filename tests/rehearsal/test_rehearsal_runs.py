"""The paper's experiment rehearsed end to end: real tokenizers and architectures, two ZeRO-3 processes.

`python -m hpcadapt +experiment=mistral_orpo_slerp scale=rehearsal cluster.nprocs=2`, checked for
what would otherwise fail hours into a cluster run: the pad token, every CPT token trained,
every assistant turn under the loss, and a merge whose vocabulary, tokenizer, chat template
and generation config are the Instruct model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from hpcadapt.__main__ import conf_dir
from hpcadapt.config import register_configs
from hpcadapt.launch.local import run_local

pytestmark = pytest.mark.slow


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_mistral_orpo_slerp_rehearsal_on_two_zero3_processes(tmp_path):
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "+experiment=mistral_orpo_slerp", "scale=rehearsal", "cluster.nprocs=2", f"output_root={tmp_path}",
            "wandb.enabled=false"])
    plan = run_local(cfg)
    assert [s.name for s in plan.stages] == ["cpt", "sft", "orpo", "merge", "eval"]
    instruct = Path(cfg.model.instruct)
    assert json.loads((instruct / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]

    for name in ("cpt", "sft", "orpo"):
        metrics = manifest(plan.stage(name).stage_dir)["metrics"]
        assert metrics["world_size"] == 2 and metrics["steps"] == 4, name
        assert plan.stage(name).spec.deepspeed["stage"] == 3
    cpt = manifest(plan.stage("cpt").stage_dir)["metrics"]
    assert cpt["notes"] == ["pad token was None (same as eos or missing); using the reserved token '[control_748]'"]
    assert cpt["corpus"]["corpus_tokens"] == cpt["corpus"]["trained_tokens_per_epoch"] > 20 * 256
    sft = manifest(plan.stage("sft").stage_dir)["metrics"]["data"]
    assert sft["rows"] == 6 + 12  # ultrachat stand-in at weight 0.5, domain Q&A at 1.0
    assert sft["loss_tokens"] > 3 * sft["rows"] * 2  # three replies per chat, each with its </s>

    merged = plan.stage("merge").stage_dir
    config = json.loads((merged / "config.json").read_text())
    assert config["vocab_size"] == json.loads((instruct / "config.json").read_text())["vocab_size"] == 32768
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (merged / name).read_bytes() == (instruct / name).read_bytes(), name
    for stage in ("sft", "orpo"):  # the chain's models carry the pad token, the vocabulary unchanged
        tokenizer_config = json.loads((plan.stage(stage).stage_dir / "tokenizer_config.json").read_text())
        assert tokenizer_config["pad_token"] == "[control_748]"
        assert json.loads((plan.stage(stage).stage_dir / "config.json").read_text())["vocab_size"] == 32768

    evaluation = manifest(plan.stage("eval").stage_dir)["metrics"]
    assert set(evaluation["summary"]) == {"instruct", "cpt", "sft", "orpo", "merged"}
    assert "synergy_verdict" in evaluation
    assert (plan.run_dir / "table.md").is_file()
