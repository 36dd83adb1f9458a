"""DPO: direct preference optimisation against a frozen reference copy of the input model.

Runs as one stage of a pipeline, e.g.
    python -m hpcadapt +experiment=smollm_dpo

The reference model is loaded with `from_pretrained` (never deep-copied: under ZeRO-3 a
copy of a partitioned model is empty) and kept in eval mode.
"""

from __future__ import annotations

from typing import Any

from hpcadapt import preflight, tracking, training
from hpcadapt.datamix import load_mix
from hpcadapt.spec import StageSpec


def run(spec: StageSpec) -> dict[str, Any]:
    from trl import DPOConfig, DPOTrainer

    env = training.setup(spec)
    s = spec.settings
    tracking.start_run(spec)
    tokenizer = training.load_tokenizer(spec.input_model, spec)
    notes = preflight.ensure_chat_template(tokenizer, spec)
    dataset = load_mix(spec.data_sources, spec.kind, seed=s["seed"])
    args = DPOConfig(**training.with_extra({
        **training.trainer_kwargs(spec, env),
        "beta": s["beta"],
        "loss_type": s["loss_type"] or "sigmoid",
        "max_length": s["max_length"],
    }, spec))
    model = training.load_model(spec.input_model, spec, env)
    notes += preflight.ensure_pad_token(tokenizer, model)
    ref_model = training.reference_model(spec, env, tokenizer)
    trainer = DPOTrainer(
        model=model,
        peft_config=training.peft_config(spec),
        ref_model=ref_model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    preflight.check_first_example(trainer, tokenizer, spec.kind)
    metrics = training.train_and_save(trainer, tokenizer, spec, env, notes)
    return metrics
