"""CPT: continued pretraining on raw domain text, every token of the corpus trained.

Runs as one stage of a pipeline, e.g.
    python -m hpcadapt +experiment=mistral_orpo_slerp            # whole chain
    python -m hpcadapt +experiment=tiny_demo cluster.nprocs=2    # 2-process ZeRO-3 on CPU

Each document is tokenized (bos as the tokenizer adds it, eos appended) and cut into
windows of at most `max_length` tokens, so a long paper is trained in full rather
than truncated at `max_length` (what TRL's default packing does to an over-long
document). With `packing: true` the windows are then packed into rows of
`max_length` (TRL's best-fit packing; documents keep their own position ids, so no
compute is spent on padding). The manifest records the corpus's tokens and the
tokens trained per epoch; they are equal.
"""

from __future__ import annotations

from typing import Any

from hpcadapt import preflight, tracking, training
from hpcadapt.datamix import load_mix
from hpcadapt.spec import StageSpec


def run(spec: StageSpec) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    env = training.setup(spec)
    s = spec.settings
    tracking.start_run(spec)
    tokenizer = training.load_tokenizer(spec.input_model, spec)
    documents = load_mix(spec.data_sources, spec.kind, seed=s["seed"])
    windows = document_windows(documents, tokenizer, s["max_length"])
    args = SFTConfig(**training.with_extra({
        **training.trainer_kwargs(spec, env),
        "packing": s["packing"],
        "max_length": s["max_length"],
        "completion_only_loss": False,
    }, spec))
    model = training.load_model(spec.input_model, spec, env)  # after args: ZeRO-3 partitions at load
    notes = preflight.ensure_pad_token(tokenizer, model)
    trainer = SFTTrainer(
        model=model,
        peft_config=training.peft_config(spec),
        args=args,
        train_dataset=windows,
        processing_class=tokenizer,
    )
    preflight.check_first_example(trainer, tokenizer, spec.kind)
    corpus = {
        "documents": len(documents),
        "windows": len(windows),
        "corpus_tokens": training.count_tokens(windows)["tokens"],
        "trained_tokens_per_epoch": training.count_tokens(trainer.train_dataset)["tokens"],
    }
    if env.is_main:
        print(
            f"cpt corpus {corpus['documents']:,} documents, {corpus['corpus_tokens']:,} tokens in "
            f"{corpus['windows']:,} windows of <= {s['max_length']}; {corpus['trained_tokens_per_epoch']:,} "
            f"tokens per epoch",
            flush=True,
        )
    metrics = training.train_and_save(trainer, tokenizer, spec, env, notes)
    return {**metrics, "corpus": corpus}


def document_windows(documents, tokenizer, max_length: int):
    """Documents -> `input_ids` windows of at most `max_length` tokens, none dropped.

    Each document ends with eos so the model learns where a text ends; windows after a
    document's first carry no bos (they continue the text).
    """
    eos = tokenizer.eos_token_id

    def split(batch: dict[str, list]) -> dict[str, list]:
        out: list[list[int]] = []
        for ids in tokenizer(batch["text"])["input_ids"]:
            if not ids or ids[-1] != eos:
                ids = [*ids, eos]
            out += [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
        return {"input_ids": out}

    return documents.map(
        split, batched=True, remove_columns=documents.column_names, desc="Tokenizing documents into windows"
    )
