"""SFT loss masks and stop tokens on the real Llama 3.1 and Mistral v0.3 tokenizers and templates.

Neither official template has `{% generation %}` markers, and Mistral's moves the system
message into the last user turn. The mask must still cover exactly every assistant reply
and the token that ends it, in all three exchanges.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, GenerationConfig

from hpcadapt.conversation import special_token_ids, tokenize_conversation, turn_terminator
from hpcadapt.preflight import ensure_pad_token, reserved_pad_token
from hpcadapt.rehearsal import build_standins
from hpcadapt.training import stop_token_ids

CONVERSATION = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "What is silk made of?"},
    {"role": "assistant", "content": "Fibroin and sericin proteins."},
    {"role": "user", "content": "Is it stronger than steel?"},
    {"role": "assistant", "content": "By weight, yes. "},
    {"role": "user", "content": "Why?"},
    {"role": "assistant", "content": "Its beta-sheet nanocrystals."},
]
REPLIES = ["Fibroin and sericin proteins.", "By weight, yes. ", "Its beta-sheet nanocrystals."]


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return {family: build_standins(family, root) for family in ("mistral_v03", "llama31")}


def runs_of_ones(mask: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("family, before, terminator, replies", [
    # Llama trims each reply; a reply follows "<|end_header_id|>\n\n" and ends with <|eot_id|>.
    ("llama31", "ĊĊ", "<|eot_id|>", [r.strip() for r in REPLIES]),
    # Mistral keeps the reply as written after a space and ends it with </s>.
    ("mistral_v03", "[/INST]", "</s>", REPLIES),
])
def test_every_assistant_turn_and_its_end_of_turn_are_trained(standins, family, before, terminator, replies):
    tokenizer = AutoTokenizer.from_pretrained(standins[family].instruct)
    assert "{% generation %}" not in tokenizer.chat_template
    conv = tokenize_conversation(tokenizer, CONVERSATION, special_token_ids(tokenizer))
    tokens = tokenizer.convert_ids_to_tokens(conv.input_ids)
    assert conv.input_ids == tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]

    runs = runs_of_ones(conv.assistant_masks)
    assert len(runs) == 3  # one contiguous run per reply, none for system or user text
    for (start, end), reply in zip(runs, replies):
        assert tokens[start - 1] == before  # starts right after the template's own text
        assert tokens[end - 1] == terminator  # and ends with the end-of-turn token
        trained = tokenizer.decode(conv.input_ids[start:end - 1])
        assert trained.strip() == reply.strip()
        assert reply.strip() in tokenizer.decode(conv.input_ids[start:end])
    # Exactly these tokens: nothing of the prompt, the system message or the user turns.
    expected = [0] * len(conv.input_ids)
    for start, end in runs:
        expected[start:end] = [1] * (end - start)
    assert conv.assistant_masks == expected
    assert sum(conv.assistant_masks) == sum(end - start for start, end in runs)


def test_mistral_system_message_lands_in_the_last_user_turn_and_is_not_trained(standins):
    tokenizer = AutoTokenizer.from_pretrained(standins["mistral_v03"].instruct)
    conv = tokenize_conversation(tokenizer, CONVERSATION, special_token_ids(tokenizer))
    text = tokenizer.decode(conv.input_ids)
    assert text.index("Answer in one sentence.") > text.index("Is it stronger than steel?")
    untrained = tokenizer.decode([i for i, m in zip(conv.input_ids, conv.assistant_masks) if not m])
    assert "Answer in one sentence." in untrained


def test_pad_tokens_reuse_reserved_tokens_without_growing_the_vocabulary(standins):
    from transformers import AutoModelForCausalLM

    for family, expected in (("mistral_v03", "[control_748]"), ("llama31", "<|finetune_right_pad_id|>")):
        tokenizer = AutoTokenizer.from_pretrained(standins[family].base)
        assert tokenizer.pad_token is None
        model = AutoModelForCausalLM.from_pretrained(standins[family].base)
        rows = model.get_input_embeddings().weight.shape[0]
        notes = ensure_pad_token(tokenizer, model)
        assert tokenizer.pad_token == expected == reserved_pad_token(tokenizer)
        assert len(tokenizer) == rows == model.get_input_embeddings().weight.shape[0]
        assert model.config.pad_token_id == tokenizer.pad_token_id and "reserved token" in notes[0]


def test_generation_stops_on_the_templates_end_of_turn(standins):
    base = AutoTokenizer.from_pretrained(standins["llama31"].base)  # eos <|end_of_text|>, Instruct's template
    assert turn_terminator(base) == 128009
    assert stop_token_ids(GenerationConfig.from_pretrained(standins["llama31"].base), base) == [128001, 128009]
    instruct = AutoTokenizer.from_pretrained(standins["llama31"].instruct)
    generation = GenerationConfig.from_pretrained(standins["llama31"].instruct)
    assert stop_token_ids(generation, instruct) == [128001, 128008, 128009]
