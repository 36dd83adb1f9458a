"""KTO: Kahneman-Tversky optimisation, from preference pairs split into unpaired examples.

Runs as one stage of a pipeline: add `/stage@stages.kto: kto` to an experiment.
Each (prompt, chosen, rejected) row becomes a desirable and an undesirable example.
"""

from __future__ import annotations

from typing import Any

from hpcadapt import preflight, tracking, training
from hpcadapt.datamix import load_mix
from hpcadapt.spec import StageSpec


def run(spec: StageSpec) -> dict[str, Any]:
    from trl import KTOConfig, KTOTrainer
    from trl.data_utils import unpair_preference_dataset

    env = training.setup(spec)
    s = spec.settings
    tracking.start_run(spec)
    tokenizer = training.load_tokenizer(spec.input_model, spec)
    notes = preflight.ensure_chat_template(tokenizer, spec)
    dataset = unpair_preference_dataset(load_mix(spec.data_sources, spec.kind, seed=s["seed"]))
    args = KTOConfig(**training.with_extra({
        **training.trainer_kwargs(spec, env), "beta": s["beta"], "max_length": s["max_length"],
    }, spec))
    model = training.load_model(spec.input_model, spec, env)
    notes += preflight.ensure_pad_token(tokenizer, model)
    ref_model = training.reference_model(spec, env, tokenizer)
    trainer = KTOTrainer(
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
