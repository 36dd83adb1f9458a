"""SimPO: reference-free, length-normalised preference optimisation (TRL's CPO trainer).

Runs as one stage of a pipeline: add `/stage@stages.simpo: simpo` to an experiment.
`loss_type="simpo"` with `cpo_alpha=0` is SimPO proper (no behaviour-cloning term).
"""

from __future__ import annotations

import os
from typing import Any

from hpcadapt import preflight, tracking, training
from hpcadapt.datamix import load_mix
from hpcadapt.spec import StageSpec


def run(spec: StageSpec) -> dict[str, Any]:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    env = training.setup(spec)
    s = spec.settings
    tracking.start_run(spec)
    tokenizer = training.load_tokenizer(spec.input_model, spec)
    notes = preflight.ensure_chat_template(tokenizer, spec)
    dataset = load_mix(spec.data_sources, spec.kind, seed=s["seed"])
    args = CPOConfig(**training.with_extra({
        **training.trainer_kwargs(spec, env), "loss_type": "simpo", "cpo_alpha": 0.0, "beta": s["beta"],
        **training.length_kwargs(s),
    }, spec))
    model = training.load_model(spec.input_model, spec, env)
    notes += preflight.ensure_pad_token(tokenizer, model)
    trainer = CPOTrainer(
        model=model,
        peft_config=training.peft_config(spec),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    preflight.check_first_example(trainer, tokenizer, spec.kind)
    metrics = training.train_and_save(trainer, tokenizer, spec, env, notes)
    return metrics
