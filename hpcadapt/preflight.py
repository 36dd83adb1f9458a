"""Checks that catch the classic silent failures of domain-adaptation runs before training.

From the paper's original scripts and user reports: a pad token equal to eos masks the
eos label so the model never learns to stop; a missing chat template made libraries
fall back to a generic one; a template that already contains bos plus a tokenizer that
adds one more gives every sequence two. Each is either repaired with a notice (pad) or
stopped with a clear error (template, double bos).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hpcadapt.errors import ModelError
from hpcadapt.spec import StageSpec
from hpcadapt.stages import kinds

# Reserved tokens that some model families ship for padding; used before adding one.
KNOWN_PAD_TOKENS = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|padding|>")
# Unused special tokens that families reserve for later use: Mistral v3's 750 `[control_N]`,
# Llama 3's `<|reserved_special_token_N|>`.
RESERVED_FILLER = re.compile(r"^(\[control_\d+\]|<\|reserved_special_token_\d+\|>)$")


def has_chat_template_files(model_dir: Path) -> bool:
    """Whether a local model folder ships a chat template (checked without transformers)."""
    if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
        return True
    cfg = model_dir / "tokenizer_config.json"
    return cfg.is_file() and bool(json.loads(cfg.read_text()).get("chat_template"))


def ensure_chat_template(tokenizer, spec: StageSpec) -> list[str]:
    """A chat stage needs the model's chat template; a Base model borrows its Instruct sibling's.

    Order: the model's own template; `model.chat_template_file`; the template of the
    family's Instruct model (`model.instruct`: a Base model fine-tuned in the paper's
    Base-CPT-SFT strategies speaks the format it is later merged with). Never a generic one.
    """
    model_path = spec.input_model
    if not kinds.get(spec.kind).chat or tokenizer.chat_template:
        return []
    loading = spec.model_loading
    template_file = loading.get("chat_template_file")
    if template_file:
        tokenizer.chat_template = Path(template_file).read_text()
        return [_notice(f"installed the chat template from {template_file}")]
    instruct = spec.instruct_model
    if instruct and instruct != model_path:
        from transformers import AutoTokenizer

        template = AutoTokenizer.from_pretrained(
            instruct, revision=spec.revisions.get(instruct), trust_remote_code=loading["trust_remote_code"]
        ).chat_template
        if template:
            tokenizer.chat_template = template
            return [_notice(f"{model_path} has no chat template; using the one of the Instruct model {instruct}")]
    raise ModelError(
        f"the tokenizer of {model_path} has no chat template, and the {spec.kind} stage formats conversations with "
        f"one. hpcadapt never substitutes a generic template; set model.chat_template_file to a Jinja file "
        f"(e.g. the Instruct model's chat_template.jinja)."
    )


def ensure_pad_token(tokenizer, model) -> list[str]:
    """Give the tokenizer a pad token distinct from eos, without growing the vocabulary if possible.

    A pad equal to eos lets collators mask the eos labels, so the model never learns to
    stop. A new token would grow the embeddings, and every later stage and the merge
    with the unchanged Instruct model would then see two vocabulary sizes. So a token
    the family already reserves is used: a dedicated pad (Llama 3's
    `<|finetune_right_pad_id|>`), else its highest unused filler (`[control_N]` in
    Mistral v3, `<|reserved_special_token_N|>`). Only a vocabulary without either grows.
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return []
    old = tokenizer.pad_token
    candidate = reserved_pad_token(tokenizer)
    if candidate is not None:
        tokenizer.pad_token = candidate
        note = f"pad token was {old!r} (same as eos or missing); using the reserved token {candidate!r}"
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        note = (f"pad token was {old!r} (same as eos or missing) and the vocabulary reserves none; added '<|pad|>' "
                f"and grew the embeddings to {len(tokenizer)} rows (the merge takes the added row from this model)")
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return [_notice(note)]


def reserved_pad_token(tokenizer) -> str | None:
    """A token of the vocabulary that can pad without ever being generated or trained."""
    vocab = tokenizer.get_vocab()
    taken = {tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id}
    for candidate in KNOWN_PAD_TOKENS:
        if candidate in vocab and vocab[candidate] not in taken:
            return candidate
    fillers = [(i, tok.content) for i, tok in tokenizer.added_tokens_decoder.items()
               if RESERVED_FILLER.match(tok.content) and i not in taken]
    return max(fillers)[1] if fillers else None


def _notice(text: str) -> str:
    """Print a decision the user should see, and return it for the stage manifest."""
    print(f"hpcadapt: {text}", flush=True)
    return text


def check_no_double_bos(token_ids: list[int], tokenizer, what: str) -> None:
    bos = tokenizer.bos_token_id
    if bos is not None and len(token_ids) >= 2 and token_ids[0] == bos and token_ids[1] == bos:
        raise ModelError(
            f"{what} starts with two bos tokens: the chat template adds one and tokenization adds another. "
            f"Fix the template (drop its bos_token) or the tokenizer's add_bos_token setting."
        )


def check_first_example(trainer, tokenizer, kind: str) -> None:
    """Look at the first tokenized example exactly as the trainer will feed it."""
    row = trainer.train_dataset[0]
    for column in ("input_ids", "prompt_input_ids", "chosen_input_ids", "completion_input_ids"):
        if column in row:
            check_no_double_bos(list(row[column]), tokenizer, f"the first {kind} example ({column})")
