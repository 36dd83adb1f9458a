"""Conversations rendered by a model's own chat template, with a loss mask on every assistant turn.

SFT should train on what the assistant says, in every turn, and on the token that ends
its turn (without it the model never learns to stop). TRL does this only for templates
with `{% generation %}` markers, which the official Llama 3.1 and Mistral v0.3 templates
lack. Rendering the conversation prefix by prefix is not a way out either: Mistral's
template moves the system message into the *last* user turn, so a prefix renders
differently from the same turns inside the whole conversation.

So the whole conversation is rendered once, as the trainer will see it, and the
assistant replies are located in that text by rendering it a second time with each reply
replaced by a unique sentinel. The text between the template's fixed segments is then
exactly each rendered reply (whatever the template did to it, e.g. `| trim`). A token is
trained when it overlaps a reply, or when it is the special token that immediately
follows a reply: the template's end of turn (`</s>`, `<|eot_id|>`, `<|im_end|>`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hpcadapt.errors import DataError, ModelError

_SENTINEL = "\u2063hpcadapt-reply-{}\u2063"  # invisible separator: never in real chat data
_SENTINEL_RE = re.compile("\u2063hpcadapt-reply-(\\d+)\u2063")


@dataclass(frozen=True)
class MaskedConversation:
    """A conversation as token ids, with 1 where the loss applies."""

    input_ids: list[int]
    assistant_masks: list[int]


def reply_spans(tokenizer, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant reply in it."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    marked_messages = list(messages)
    for k, i in enumerate(assistant):
        marked_messages[i] = {**messages[i], "content": _SENTINEL.format(k)}
    marked = tokenizer.apply_chat_template(marked_messages, tokenize=False)
    found = [int(n) for n in _SENTINEL_RE.findall(marked)]
    if sorted(found) != list(range(len(assistant))):
        raise ModelError(
            f"the chat template renders {len(found)} of this conversation's {len(assistant)} assistant replies "
            f"(or renders one twice); hpcadapt cannot tell which tokens are the assistant's"
        )
    segments = _SENTINEL_RE.split(marked)[::2]  # the template's own text around the replies
    spans: list[tuple[int, int]] = []
    if not text.startswith(segments[0]):
        raise ModelError("the chat template renders the same conversation differently twice")
    pos = len(segments[0])
    for k, after in enumerate(segments[1:]):
        content = messages[assistant[found[k]]]["content"]
        end = _reply_end(text, pos, content, after, is_last=k == len(segments) - 2)
        if end is None:
            raise ModelError(
                f"cannot locate assistant reply {k + 1} in the rendered conversation: the chat template changes "
                f"reply text in a way other than trimming it"
            )
        spans.append((pos, end))
        pos = end + len(after)
    return text, spans


def _reply_end(text: str, start: int, content: str, after: str, is_last: bool) -> int | None:
    """Where the rendered reply starting at `start` ends, given the fixed text that follows it."""
    for rendered in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip())):
        end = start + len(rendered)
        if (
            text[start:end] == rendered
            and text.startswith(after, end)
            and (not is_last or end + len(after) == len(text))
        ):
            return end
    return None


def tokenize_conversation(tokenizer, messages: list[dict[str, Any]], special_ids: set[int]) -> MaskedConversation:
    """Token ids of the rendered conversation and its assistant-turn loss mask.

    `special_ids` are the tokenizer's special token ids (computed once by the caller);
    the special token right after a reply is its end of turn and is trained too.
    """
    text, spans = reply_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    mask = [0] * len(ids)
    for t, (start, end) in enumerate(offsets):
        for span_start, span_end in spans:
            if start < span_end and end > span_start:
                mask[t] = 1
                follows = t + 1 < len(ids) and offsets[t + 1][0] >= span_end
                if follows and ids[t + 1] in special_ids:
                    mask[t + 1] = 1
    return MaskedConversation(ids, mask)


def special_token_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids) | {
        i for i, tok in tokenizer.added_tokens_decoder.items() if getattr(tok, "special", False)
    }


def turn_terminator(tokenizer) -> int | None:
    """The special token the chat template puts right after an assistant reply, if any.

    Generation must stop on it: a Base model fine-tuned with its Instruct sibling's
    template ends replies with `<|eot_id|>`, which its own eos (`<|end_of_text|>`) is not.
    """
    probe = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
    try:
        conv = tokenize_conversation(tokenizer, probe, special_token_ids(tokenizer))
    except Exception:  # noqa: BLE001 - a template that cannot render a plain exchange has no terminator to add
        return None
    trained = [i for i, m in zip(conv.input_ids, conv.assistant_masks) if m]
    return trained[-1] if trained and trained[-1] in special_token_ids(tokenizer) else None


def masked_dataset(dataset, tokenizer, what: str):
    """Map a `messages` dataset to `input_ids` + `assistant_masks`, failing with the row number."""
    specials = special_token_ids(tokenizer)

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        try:
            conv = tokenize_conversation(tokenizer, row["messages"], specials)
        except ModelError as e:
            raise DataError(f"{what}, row {index}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a template's raise_exception() or a Jinja error
            raise DataError(f"{what}, row {index}: the chat template refused this conversation: {e}") from None
        if 1 not in conv.assistant_masks:
            raise DataError(f"{what}, row {index}: the conversation has no assistant reply to train on")
        return {"input_ids": conv.input_ids, "assistant_masks": conv.assistant_masks}

    return dataset.map(
        convert,
        with_indices=True,
        remove_columns=dataset.column_names,
        desc="Rendering conversations with assistant masks",
    )
