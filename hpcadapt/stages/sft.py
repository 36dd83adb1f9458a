"""SFT: supervised fine-tuning on chat data, with the loss on every assistant reply.

Runs as one stage of a pipeline, e.g.
    python -m hpcadapt +experiment=mistral_sft_slerp

Conversations are rendered with the model's own chat template and the loss covers every
assistant turn, including the token that ends it (hpcadapt/conversation.py). This does
not depend on `{% generation %}` markers, which the official Llama 3.1 and Mistral v0.3
templates lack, and is the same for templates that have them. The model is never
trained to imitate the user. `assistant_only_loss: false` trains on every token.
"""

from __future__ import annotations

from typing import Any

from hpcadapt import conversation, preflight, tracking, training
from hpcadapt.datamix import load_mix
from hpcadapt.spec import StageSpec


def run(spec: StageSpec) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    env = training.setup(spec)
    s = spec.settings
    tracking.start_run(spec)
    tokenizer = training.load_tokenizer(spec.input_model, spec)
    notes = preflight.ensure_chat_template(tokenizer, spec)
    dataset = load_mix(spec.data_sources, spec.kind, seed=s["seed"])
    if s["assistant_only_loss"]:
        dataset = conversation.masked_dataset(dataset, tokenizer, f"stage {spec.name} data")
    args = SFTConfig(**training.with_extra({
        **training.trainer_kwargs(spec, env),
        "packing": s["packing"],
        "max_length": s["max_length"],
        "assistant_only_loss": False,  # the masks above replace TRL's marker-based ones
        "completion_only_loss": False,
    }, spec))
    model = training.load_model(spec.input_model, spec, env)
    notes += preflight.ensure_pad_token(tokenizer, model)
    trainer = SFTTrainer(
        model=model,
        peft_config=training.peft_config(spec),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    preflight.check_first_example(trainer, tokenizer, spec.kind)
    metrics = training.train_and_save(trainer, tokenizer, spec, env, notes)
    return {**metrics, "data": training.count_tokens(trainer.train_dataset)}
