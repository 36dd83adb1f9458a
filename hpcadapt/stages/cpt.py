"""CPT: continued pretraining on raw domain text, packed into full-length sequences.

Runs as one stage of a pipeline, e.g.
    python -m hpcadapt +experiment=mistral_orpo_slerp            # whole chain
    python -m hpcadapt +experiment=tiny_demo cluster.nprocs=2    # 2-process ZeRO-3 on CPU

Packing concatenates documents (each ending in eos) and cuts them into `max_length`
windows, so no compute is spent on padding: what the paper did for CPT.
"""

from __future__ import annotations

from typing import Any

from hpcadapt import preflight, tracking, training
from hpcadapt.datamix import load_mix


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    env = training.setup(spec)
    s = spec["settings"]
    tracking.start_run(spec)
    tokenizer = training.load_tokenizer(spec["input_model"], spec)
    dataset = load_mix(spec["data_sources"], "cpt", seed=s["seed"])
    args = SFTConfig(**training.with_extra({
        **training.trainer_kwargs(spec, env),
        "dataset_text_field": "text",
        "packing": s["packing"],
        "max_length": s["max_length"],
        "completion_only_loss": False,
    }, spec))
    model = training.load_model(spec["input_model"], spec, env)  # after args: ZeRO-3 partitions at load
    notes = preflight.ensure_pad_token(tokenizer, model)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    preflight.check_first_example(trainer, tokenizer, "cpt")
    metrics = training.train_and_save(trainer, tokenizer, spec, env, notes)
    return metrics
