"""ORPO: odds-ratio preference optimisation, SFT and preference loss in one objective.

Runs as one stage of a pipeline, e.g.
    python -m hpcadapt +experiment=mistral_orpo_slerp

ORPO needs no reference model, which halves its memory against DPO: the paper's choice
for Mistral and Llama from Instruct (beta 0.1). TRL keeps it in `trl.experimental.orpo`.
"""

from __future__ import annotations

import os
from typing import Any

from hpcadapt import preflight, tracking, training
from hpcadapt.datamix import load_mix
from hpcadapt.spec import StageSpec


def run(spec: StageSpec) -> dict[str, Any]:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    env = training.setup(spec)
    s = spec.settings
    tracking.start_run(spec)
    tokenizer = training.load_tokenizer(spec.input_model, spec)
    notes = preflight.ensure_chat_template(tokenizer, spec)
    dataset = load_mix(spec.data_sources, spec.kind, seed=s["seed"])
    args = ORPOConfig(**training.with_extra({
        **training.trainer_kwargs(spec, env), "beta": s["beta"], **training.length_kwargs(s),
    }, spec))
    model = training.load_model(spec.input_model, spec, env)
    notes += preflight.ensure_pad_token(tokenizer, model)
    trainer = ORPOTrainer(
        model=model,
        peft_config=training.peft_config(spec),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    preflight.check_first_example(trainer, tokenizer, spec.kind)
    metrics = training.train_and_save(trainer, tokenizer, spec, env, notes)
    return metrics
