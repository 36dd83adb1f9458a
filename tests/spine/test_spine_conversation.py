"""Assistant-turn loss masks from the rendered conversation, for any chat template."""

from __future__ import annotations

import pytest

from hpcadapt.conversation import reply_spans, special_token_ids, tokenize_conversation, turn_terminator
from hpcadapt.errors import ModelError

THREE_EXCHANGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What colour is Varnite?"},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "And its melting point?"},
    {"role": "assistant", "content": " 1200 K. "},
    {"role": "user", "content": "Is it strong?"},
    {"role": "assistant", "content": "Yes, very."},
]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from hpcadapt.demo.tiny import build_tokenizer

    return build_tokenizer(["Varnite is a red alloy that melts at 1200 K. Is it strong? Yes, very."] * 50,
                           vocab_size=400)


def test_masks_equal_the_generation_markers_where_a_template_has_them(tiny_tokenizer):
    """The demo's template marks each reply and its eos with {% generation %}: HF's own
    assistant mask from those markers is the reference our rendering must reproduce."""
    reference = tiny_tokenizer.apply_chat_template(THREE_EXCHANGES, tokenize=True, return_dict=True,
                                                   return_assistant_tokens_mask=True)
    ours = tokenize_conversation(tiny_tokenizer, THREE_EXCHANGES, special_token_ids(tiny_tokenizer))
    assert ours.input_ids == reference["input_ids"]
    assert ours.assistant_masks == reference["assistant_masks"]
    assert sum(ours.assistant_masks) > 3 * 2  # three replies, each with its eos


def test_template_without_markers_gets_every_reply_and_its_end_of_turn(tiny_tokenizer):
    tiny_tokenizer.chat_template = tiny_tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", "")
    conv = tokenize_conversation(tiny_tokenizer, THREE_EXCHANGES, special_token_ids(tiny_tokenizer))
    trained = tiny_tokenizer.decode([i for i, m in zip(conv.input_ids, conv.assistant_masks) if m])
    assert trained == "Red.<|eos|> 1200 K. <|eos|>Yes, very.<|eos|>"
    assert turn_terminator(tiny_tokenizer) == tiny_tokenizer.eos_token_id


def test_a_template_that_rewrites_replies_is_refused(tiny_tokenizer):
    tiny_tokenizer.chat_template = "{% for m in messages %}{{ m['content'] | replace('.', '!') }}{% endfor %}"
    with pytest.raises(ModelError, match="cannot locate assistant reply 1"):
        reply_spans(tiny_tokenizer, THREE_EXCHANGES)
