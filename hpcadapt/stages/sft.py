"""SFT: supervised fine-tuning on chat data, with the loss on assistant replies only.

Runs as one stage of a pipeline, e.g.
    python -m hpcadapt +experiment=mistral_sft_slerp

Assistant-only loss needs `{% generation %}` markers in the chat template. Many
official templates (Llama 3.1, Mistral v0.3) lack them; for those each conversation is
split into a prompt (every turn before the last reply) and a completion (the last
reply), and the loss covers the completion only. Either way, the model is not trained
to imitate the user.
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
    notes = preflight.ensure_chat_template(tokenizer, "sft", spec, spec["input_model"])
    dataset = load_mix(spec["data_sources"], "sft", seed=s["seed"])
    loss_kwargs: dict[str, Any] = {"assistant_only_loss": False, "completion_only_loss": None}
    if s["assistant_only_loss"]:
        if "{% generation %}" in tokenizer.chat_template or "{%- generation %}" in tokenizer.chat_template:
            loss_kwargs["assistant_only_loss"] = True
        else:
            dataset = dataset.map(split_last_reply, remove_columns=["messages"])
            loss_kwargs["completion_only_loss"] = True
            notes.append("chat template has no generation markers: loss on the last assistant reply only")
    args = SFTConfig(**training.with_extra({
        **training.trainer_kwargs(spec, env),
        "packing": s["packing"],
        "max_length": s["max_length"],
        **loss_kwargs,
    }, spec))
    model = training.load_model(spec["input_model"], spec, env)
    notes += preflight.ensure_pad_token(tokenizer, model)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    preflight.check_first_example(trainer, tokenizer, "sft")
    metrics = training.train_and_save(trainer, tokenizer, spec, env, notes)
    return metrics


def split_last_reply(row: dict[str, Any]) -> dict[str, Any]:
    """Conversation -> (prompt: every turn before the last assistant reply, completion: that reply)."""
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return {"prompt": messages[:last], "completion": [messages[last]]}
