"""`cluster.nprocs=2 deepspeed=zero3`: real ZeRO-3 over gloo, each rank holding half of every parameter."""

from __future__ import annotations

import json

import pytest
from spine_helpers import FAST, compose_cfg, write_toy_domain

from hpcadapt.launch.local import run_local
from hpcadapt.training import saved_parameters

pytestmark = pytest.mark.slow


def test_two_process_zero3_cpt_and_orpo(tmp_path):
    write_toy_domain(tmp_path)
    base = [f"output_root={tmp_path}", *FAST, "wandb.enabled=false"]
    run_local(compose_cfg([*base, "pipeline.chain=[]"]))  # tiny Base/Instruct, single process
    plan = run_local(compose_cfg([
        *base, "pipeline.chain=[cpt,orpo]", "deepspeed=zero3", "cluster.nprocs=2",
        "stages.cpt.per_device_train_batch_size=4", "stages.orpo.per_device_train_batch_size=4",
        "stages.cpt.max_steps=4", "stages.orpo.max_steps=3",
    ]))
    for name in ("cpt", "orpo"):
        d = plan.stage(name).stage_dir
        manifest = json.loads((d / "manifest.json").read_text())
        assert manifest["complete"] and manifest["metrics"]["world_size"] == 2
        shards = [json.loads((d / "logs" / f"partition_rank{r}.json").read_text()) for r in (0, 1)]
        full = shards[0]["full_numel"]
        for shard in shards:
            assert shard["world_size"] == 2 and shard["full_numel"] == full
            # ZeRO-3 pads each parameter to a multiple of the world size, hence "about half".
            assert shard["local_numel"] <= full / 2 + 4096, shard
        assert sum(s["local_numel"] for s in shards) >= full
        # The 16-bit gather at save wrote every parameter, not ZeRO-3's empty placeholders.
        assert saved_parameters(d) == full
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(d)
        assert sum(p.numel() for p in model.parameters()) == full
