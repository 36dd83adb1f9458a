"""Stand-ins of the paper's three families carry the real tokenizers, templates and configs.

Each family is built once for the module (about 6 s each on 2 cores, most of it the Llama
tokenizer conversion and the SmolLM BPE training) and then checked against exact values:
ids and vocabulary sizes of the real tokenizers, chat templates rendered to strings written
out by hand, the places where Base and Instruct differ, and the weights. Where a package
holds the real thing (mistral-common's own tokenizer, tiktoken with Llama 3's ranks, the
special-token list in llama-models' source) the stand-in is compared with it directly.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from hpcadapt.errors import HpcadaptError
from hpcadapt.rehearsal import FAMILIES, StandinPair, StandinSourceMissing, build_standins
from hpcadapt.rehearsal.standins import (
    LLAMA3_PATTERN,
    LLAMA3_SPECIAL_TOKENS,
    MANIFEST,
    SMOLLM_SPECIAL_TOKENS,
    _publish,
    train_bytelevel_bpe,
)

VOCAB = {"mistral_v03": 32768, "llama31": 128256, "smollm": 49152}
ARCH = {"mistral_v03": "MistralForCausalLM", "llama31": "LlamaForCausalLM", "smollm": "LlamaForCausalLM"}
VARIANTS = ("base", "instruct")

# Three exchanges with a system prompt; one user turn ends in whitespace, which Llama's
# template trims and the others keep.
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is MPI? \n"},
    {"role": "assistant", "content": "A message-passing standard."},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You're welcome."},
]
# The system prompt goes into the LAST user turn; no generation prompt exists (the turn
# simply ends with [/INST]); assistant turns get a leading space and end with </s>.
MISTRAL_RENDERED = (
    "<s>[INST] Hi[/INST] Hello!</s>"
    "[INST] What is MPI? \n[/INST] A message-passing standard.</s>"
    "[INST] You are terse.\n\nThanks[/INST] You're welcome.</s>"
)
# Always a system header with the knowledge/today dates; every content trimmed.
LLAMA_RENDERED = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    "You are terse.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is MPI?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nA message-passing standard.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nThanks<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nYou're welcome.<|eot_id|>"
)
SMOLLM_RENDERED = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n"
    "<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n"
    "<|im_start|>user\nWhat is MPI? \n<|im_end|>\n"
    "<|im_start|>assistant\nA message-passing standard.<|im_end|>\n"
    "<|im_start|>user\nThanks<|im_end|>\n"
    "<|im_start|>assistant\nYou're welcome.<|im_end|>\n"
)


def package_file(module: str, relative: str) -> Path:
    return Path(importlib.util.find_spec(module).submodule_search_locations[0], relative)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("standins")


@pytest.fixture(scope="module")
def pairs(root) -> dict[str, StandinPair]:
    return {family: build_standins(family, root) for family in FAMILIES}


@pytest.fixture(scope="module")
def tokenizers(pairs):
    return {
        (family, variant): AutoTokenizer.from_pretrained(getattr(pair, variant))
        for family, pair in pairs.items()
        for variant in VARIANTS
    }


def folder(pairs, family: str, variant: str) -> Path:
    return getattr(pairs[family], variant)


def rendered(tokenizer, messages=MESSAGES, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def chat_ids(tokenizer, messages, **kwargs) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)["input_ids"]


# ---------------------------------------------------------------------------------------
# Layout, caching, errors


def test_folders_hold_what_save_pretrained_writes(root, pairs):
    model_files = {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    expected = {
        ("mistral_v03", "base"): model_files | {"tokenizer.model"},
        ("mistral_v03", "instruct"): model_files | {"tokenizer.model", "chat_template.jinja"},
        ("llama31", "base"): model_files | {"chat_template.jinja"},
        ("llama31", "instruct"): model_files | {"chat_template.jinja"},
        ("smollm", "base"): model_files,
        ("smollm", "instruct"): model_files | {"chat_template.jinja"},
    }
    for (family, variant), names in expected.items():
        assert {p.name for p in folder(pairs, family, variant).iterdir()} == names, (family, variant)
    for family, pair in pairs.items():
        assert pair.base.parent == pair.instruct.parent
        assert pair.base.parent.name.startswith(f"{family}-")
        assert {p.name for p in pair.base.parent.iterdir()} == {"base", "instruct", MANIFEST}
        assert json.loads((pair.base.parent / MANIFEST).read_text())["family"] == family
    # Only the three published folders: no staging folder is left behind.
    assert sorted(p.name.split("-")[0] for p in root.iterdir()) == sorted(FAMILIES)


def test_second_call_returns_the_built_folders_without_rebuilding(root, pairs):
    stamps = {f: pairs[f].instruct.joinpath("model.safetensors").stat().st_mtime_ns for f in FAMILIES}
    start = time.perf_counter()
    again = {family: build_standins(family, root) for family in FAMILIES}
    elapsed = time.perf_counter() - start
    assert again == pairs
    assert elapsed < 1.0, f"three cached calls took {elapsed:.2f} s"
    assert {f: pairs[f].instruct.joinpath("model.safetensors").stat().st_mtime_ns for f in FAMILIES} == stamps


def test_a_losing_concurrent_build_leaves_the_winner_in_place(tmp_path):
    target, late = tmp_path / "pair", tmp_path / ".pair.late.partial"
    (target / "base").mkdir(parents=True)
    (target / "base" / "winner").write_text("first")
    (late / "base").mkdir(parents=True)
    (late / "base" / "winner").write_text("second")
    assert _publish(late, target) is False
    assert (target / "base" / "winner").read_text() == "first"
    assert _publish(late, tmp_path / "fresh") is True
    assert (tmp_path / "fresh" / "base" / "winner").read_text() == "second"


def test_a_missing_source_package_names_the_pip_command(tmp_path, monkeypatch):
    # A None entry in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "mistral_common", None)
    with pytest.raises(StandinSourceMissing) as caught:
        build_standins("mistral_v03", tmp_path)
    assert isinstance(caught.value, HpcadaptError)
    assert "(mistral_common)" in str(caught.value)
    assert "pip install --no-deps mistral-common==1.13.1." in str(caught.value)
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    only_tiktoken = r"\(tiktoken\)\. Install them with: pip install tiktoken\.$"
    with pytest.raises(StandinSourceMissing, match=only_tiktoken):
        build_standins("llama31", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mistral_v03, llama31, smollm"):
        build_standins("llama2", tmp_path)


# ---------------------------------------------------------------------------------------
# Every family


@pytest.mark.parametrize("family", FAMILIES)
def test_vocabulary_size_agrees_everywhere(pairs, tokenizers, family):
    for variant in VARIANTS:
        path = folder(pairs, family, variant)
        config = AutoConfig.from_pretrained(path)
        with safe_open(path / "model.safetensors", "pt") as weights:
            rows = {
                name: weights.get_slice(name).get_shape()[0]
                for name in weights.keys()
                if "embed" in name or "lm_head" in name
            }
        expected_rows = {"model.embed_tokens.weight": VOCAB[family]}
        if family != "smollm":  # tied: the head is the embedding, stored once
            expected_rows["lm_head.weight"] = VOCAB[family]
        assert len(tokenizers[family, variant]) == config.vocab_size == VOCAB[family]
        assert rows == expected_rows


@pytest.mark.parametrize("family", FAMILIES)
def test_models_load_as_the_real_class_and_run(pairs, tokenizers, family):
    for variant in VARIANTS:
        model = AutoModelForCausalLM.from_pretrained(folder(pairs, family, variant), dtype=torch.float32)
        assert type(model).__name__ == ARCH[family]
        assert model.dtype == torch.float32
        tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        assert tied == (family == "smollm") == model.config.tie_word_embeddings
        ids = tokenizers[family, variant]("Hello world", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits
        assert logits.shape == (1, ids.shape[1], VOCAB[family])
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_instruct_is_base_plus_a_tenth_of_each_tensor(pairs, family):
    base = load_file(pairs[family].base / "model.safetensors")
    instruct = load_file(pairs[family].instruct / "model.safetensors")
    assert base.keys() == instruct.keys()
    for name, b in base.items():
        b, i = b.float().flatten(), instruct[name].float().flatten()
        relative = ((i - b).norm() / b.norm()).item()
        cosine = (torch.dot(b, i) / (b.norm() * i.norm())).item()
        assert 0.095 < relative < 0.105, (name, relative)
        assert cosine < 0.999, (name, cosine)  # SLERP treats > 0.9995 as colinear


# ---------------------------------------------------------------------------------------
# Mistral-7B-v0.3


def test_mistral_tokens_and_configs(pairs, tokenizers):
    for variant in VARIANTS:
        tok = tokenizers["mistral_v03", variant]
        ids = tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "[INST]", "[/INST]"])
        assert ids == [0, 1, 2, 3, 4]
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == (1, 2, None, None)
        assert tok("Hello world")["input_ids"] == [1, 23325, 2294]
        path = folder(pairs, "mistral_v03", variant)
        assert (path / "tokenizer.model").read_bytes() == package_file(
            "mistral_common", "data/mistral_instruct_tokenizer_240323.model.v3"
        ).read_bytes()
        config = AutoConfig.from_pretrained(path)
        assert config.rope_parameters["rope_theta"] == 1e6
        assert (config.sliding_window, config.max_position_embeddings) == (None, 32768)
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, None)
        assert config.tie_word_embeddings is False
        assert config.rms_norm_eps == 1e-5 and config.dtype == torch.bfloat16
        generation = GenerationConfig.from_pretrained(path)
        assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, None)
    assert tokenizers["mistral_v03", "base"].chat_template is None


def test_mistral_template_renders_like_mistral_common(tokenizers):
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    tok = tokenizers["mistral_v03", "instruct"]
    assert "{% generation %}" not in tok.chat_template
    assert rendered(tok) == MISTRAL_RENDERED
    # The prompt up to the last answer, token for token as Mistral's own library encodes it.
    prompt = MESSAGES[:-1]
    reference = MistralTokenizer.from_file(
        str(package_file("mistral_common", "data/mistral_instruct_tokenizer_240323.model.v3"))
    ).encode_chat_completion(ChatCompletionRequest(messages=prompt))
    assert chat_ids(tok, prompt) == reference.tokens
    assert tok.convert_ids_to_tokens(chat_ids(tok, MESSAGES)[-5:]) == ["'", "re", "▁welcome", ".", "</s>"]


# ---------------------------------------------------------------------------------------
# Llama-3.1-8B


def test_llama_special_tokens_are_those_of_llama_models():
    source = package_file("llama_models", "llama3/tokenizer.py").read_text()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Tokenizer")
    values = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.walk(cls)
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in {"pat_str", "num_reserved_special_tokens", "special_tokens"}
        and isinstance(node.value, (ast.Constant, ast.List))
    }
    assert values["pat_str"] == LLAMA3_PATTERN
    assert values["num_reserved_special_tokens"] == len(LLAMA3_SPECIAL_TOKENS) == 256
    assert tuple(values["special_tokens"]) == LLAMA3_SPECIAL_TOKENS[: len(values["special_tokens"])]
    assert LLAMA3_SPECIAL_TOKENS[-1] == "<|reserved_special_token_245|>"


def test_llama_tokens_and_configs(pairs, tokenizers):
    base, instruct = tokenizers["llama31", "base"], tokenizers["llama31", "instruct"]
    for tok in (base, instruct):
        assert tok.convert_ids_to_tokens(list(range(128000, 128256))) == list(LLAMA3_SPECIAL_TOKENS)
        named = ["<|eot_id|>", "<|finetune_right_pad_id|>", "<|eom_id|>"]
        assert tok.convert_tokens_to_ids(named) == [128009, 128004, 128008]
        assert (tok.bos_token_id, tok.pad_token, tok.pad_token_id) == (128000, None, None)
        assert tok("Hello world")["input_ids"] == [128000, 9906, 1917]
        assert tok.decode([128000, 9906, 1917, 128009], skip_special_tokens=True) == "Hello world"
    assert (base.eos_token, base.eos_token_id) == ("<|end_of_text|>", 128001)
    assert (instruct.eos_token, instruct.eos_token_id) == ("<|eot_id|>", 128009)
    sampling = {"do_sample": True, "temperature": 0.6, "top_p": 0.9}
    for variant, eos in (("base", 128001), ("instruct", [128001, 128008, 128009])):
        path = folder(pairs, "llama31", variant)
        config = AutoConfig.from_pretrained(path)
        assert config.rope_parameters == {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
        assert config.max_position_embeddings == 131072
        assert (config.bos_token_id, config.eos_token_id) == (128000, eos)
        assert (config.pad_token_id, config.tie_word_embeddings, config.dtype) == (None, False, torch.bfloat16)
        generation = GenerationConfig.from_pretrained(path)
        assert (generation.bos_token_id, generation.eos_token_id) == (128000, eos)
        assert generation.pad_token_id is None
        assert {k: getattr(generation, k) for k in sampling} == sampling


def test_llama_encodes_like_tiktoken(tokenizers):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    specials = {token: 128000 + i for i, token in enumerate(LLAMA3_SPECIAL_TOKENS)}
    reference = tiktoken.Encoding(
        name="llama3",
        pat_str=LLAMA3_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(package_file("llama_models", "llama3/tokenizer.model"))),
        special_tokens=specials,
    )
    tok = tokenizers["llama31", "instruct"]
    for text in ["  two  spaces", "def f(x):\n    return x+1\n", "ünïcödé 日本語 😀", "MPI_Allreduce(3.14159) I'M"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text), text


def test_llama_template_is_the_original_one_in_both(tokenizers):
    original = package_file("trl", "chat_templates/llama3_1.jinja").read_text()
    for variant in VARIANTS:
        tok = tokenizers["llama31", variant]
        assert tok.chat_template == original
        assert rendered(tok) == LLAMA_RENDERED
    prompt = rendered(tokenizers["llama31", "instruct"], MESSAGES[:-1], add_generation_prompt=True)
    assert prompt.endswith("Thanks<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = chat_ids(tokenizers["llama31", "instruct"], MESSAGES)
    assert ids[:2] == [128000, 128006] and ids[-1] == 128009 and ids.count(128000) == 1


# ---------------------------------------------------------------------------------------
# SmolLM-1.7B


def test_smollm_tokens_and_configs(pairs, tokenizers):
    base, instruct = tokenizers["smollm", "base"], tokenizers["smollm", "instruct"]
    for tok in (base, instruct):
        assert tok.convert_ids_to_tokens(list(range(17))) == list(SMOLLM_SPECIAL_TOKENS)
        ids = tok("Hello world 2024")["input_ids"]
        assert min(ids) >= 17  # no bos or other special token added to plain text
        assert tok.convert_ids_to_tokens(ids)[-4:] == ["2", "0", "2", "4"]  # digits one by one
        assert tok.decode(ids) == "Hello world 2024"
    assert (base.bos_token, base.eos_token, base.unk_token, base.pad_token) == ("<|endoftext|>",) * 3 + (None,)
    assert (instruct.bos_token_id, instruct.eos_token_id, instruct.pad_token_id) == (1, 2, 2)  # pad == eos
    assert base.chat_template is None
    expected = {"base": (0, 0, torch.float32), "instruct": (1, 2, torch.bfloat16)}
    for variant, (bos, eos, dtype) in expected.items():
        path = folder(pairs, "smollm", variant)
        config = AutoConfig.from_pretrained(path)
        assert (config.bos_token_id, config.eos_token_id, config.dtype) == (bos, eos, dtype)
        assert config.tie_word_embeddings is True
        assert (config.rope_parameters["rope_theta"], config.max_position_embeddings) == (10000.0, 2048)
        generation = GenerationConfig.from_pretrained(path)
        assert (generation.bos_token_id, generation.eos_token_id) == (bos, eos)


def test_smollm_template_is_plain_chatml(tokenizers):
    tok = tokenizers["smollm", "instruct"]
    assert rendered(tok) == SMOLLM_RENDERED
    assert rendered(tok, MESSAGES[:2], add_generation_prompt=True) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "{% generation %}" not in tok.chat_template


def test_bpe_training_that_runs_out_of_merges_is_filled_to_the_exact_size():
    core = train_bytelevel_bpe(["def f(x):\n    return x + 1\n"] * 3, 400, SMOLLM_SPECIAL_TOKENS)
    assert core.get_vocab_size() == 400
    filler = core.token_to_id("<|standin_filler_0|>")
    assert filler is not None and core.id_to_token(399).startswith("<|standin_filler_")
    encoded = core.encode("<|standin_filler_0|> def f(x)").ids
    assert max(encoded) < filler
