"""Stand-in Base and Instruct model folders of the paper's three model families, built offline.

Why: the pipeline (CPT -> SFT -> DPO/ORPO -> SLERP merge) breaks on the real families'
quirks, not on a toy tokenizer's. Mistral-7B-v0.3 has no pad token and a chat template that
moves the system prompt into the last user turn; Llama-3.1-8B has 128,256 tokens, a Base
that stops on <|end_of_text|> and an Instruct that stops on <|eot_id|> (three stop ids in
its configs); SmolLM-1.7B ties its embeddings and its Instruct pads with its own eos. A
rehearsal on a 2-core CPU has to meet all of these before a cluster run does. So each
stand-in keeps the real tokenizer (for SmolLM, one built with its traits), chat template,
special tokens, eos/pad set-up, generation config and config family (architecture class,
rope settings, tied or untied embeddings, vocabulary size) and shrinks only widths and depth.

Where the real pieces come from, all offline (nothing here touches a model hub):
- Mistral-7B-v0.3: the v3 SentencePiece model that `mistral-common` ships, converted by
  transformers' own LlamaTokenizer path; the chat template from mistral-common's template
  generator (v3, SentencePiece spacing, bos/eos as `bos_token`/`eos_token` variables as the
  hub template has them). The SentencePiece file is kept as `tokenizer.model`, as on the hub.
- Llama-3.1-8B: the tiktoken ranks that `llama-models` ships plus the 256 special tokens of
  its `llama3/tokenizer.py`, converted by transformers' TikTokenConverter; the chat template
  is the original Llama 3.1 one that TRL ships (read from the installed package).
- SmolLM-1.7B: its tokenizer is in no package, so a byte-level BPE is trained here on the
  Python standard library's own .py/.txt files (always present, never random): exactly
  49,152 tokens, its 17 special tokens at ids 0..16, digits split one by one before GPT-2's
  byte-level split, no bos added to plain text.
The packages are located with `importlib.util.find_spec` (which does not import them); a
missing one raises `StandinSourceMissing` with the pip command that installs it.

Weights: Base is a seeded random init; Instruct is Base plus a seeded perturbation of 10% of
each tensor's norm, so the two are distinct models of one shape (like a fine-tune) and a
SLERP of them never takes the colinear branch. Storage dtype follows the hub: Mistral and
Llama (Base and Instruct) and SmolLM Instruct ship bfloat16 safetensors with dtype bfloat16
in config.json; SmolLM Base ships float32. Loading with `dtype=torch.float32` on CPU (what
the pipeline does there) works and gives float32 weights; loading with no dtype gives the
stored one, as with the real models.

Folders: `out_root/<family>-<key>/base` and `.../instruct`, where `<key>` hashes everything
that decides the bytes (family, shape, seed, FORMAT_VERSION, versions of the source and
conversion packages, and for SmolLM the Python version whose standard library is the
training text). A build goes into a hidden folder beside the target and is renamed into
place, so a reader never sees half a build, a finished folder is returned at once, and of
two concurrent builders one wins the rename and the other discards its copy.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpcadapt.errors import HpcadaptError

# Bump when a change here alters the bytes of a build, so old cache folders are not reused.
FORMAT_VERSION = 1
FAMILIES = ("mistral_v03", "llama31", "smollm")

# Written beside base/ and instruct/ (not inside them, which stay hub-like): what was built.
MANIFEST = "standin.json"
# Instruct = Base + noise of this fraction of each tensor's norm: cos(angle) ~ 0.995, far
# below SLERP's colinearity threshold (0.9995), yet a small change like a fine-tune's.
INSTRUCT_PERTURBATION = 0.1


class StandinError(HpcadaptError):
    """A stand-in cannot be built as the real model would look (a source changed shape)."""


class StandinSourceMissing(StandinError):
    """A package that ships a family's real tokenizer or chat template is not installed."""


@dataclass(frozen=True)
class StandinShape:
    """Decoder widths and depth. Tiny by default so a whole pipeline rehearses on 2 CPU cores;
    the vocabulary is never shrunk, because its size is one of the traits being rehearsed."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2


@dataclass(frozen=True)
class StandinPair:
    """The two model folders of one family: pretrained Base and its Instruct fine-tune."""

    family: str
    base: Path
    instruct: Path


# ---------------------------------------------------------------------------------------
# Source packages


@dataclass(frozen=True)
class _Source:
    """A package a family's build reads: import name (looked up, not imported), distribution
    name (its version goes into the cache key) and what pip installs."""

    module: str
    dist: str
    pip: str
    no_deps: str = ""  # why it installs with --no-deps; empty: with its dependencies


# mistral-common and llama-models install with --no-deps (each says why); the few libraries
# they need here are listed on their own.
_SOURCES: dict[str, tuple[_Source, ...]] = {
    "mistral_v03": (
        _Source(
            "mistral_common",
            "mistral-common",
            "mistral-common==1.13.1",
            no_deps="mistral-common declares numpy<2.4, which the project's numpy does not meet",
        ),
        _Source("sentencepiece", "sentencepiece", "sentencepiece"),
        _Source("google.protobuf", "protobuf", "protobuf"),
        _Source("jsonschema", "jsonschema", "jsonschema"),
        _Source("pydantic_extra_types", "pydantic-extra-types", "pydantic-extra-types[pycountry]"),
        _Source("pycountry", "pycountry", "pydantic-extra-types[pycountry]"),
    ),
    "llama31": (
        _Source(
            "llama_models",
            "llama-models",
            "llama-models==0.3.0",
            no_deps="llama-models would pull in hub clients and tools the stand-ins never use",
        ),
        _Source("tiktoken", "tiktoken", "tiktoken"),
        _Source("trl", "trl", "trl"),
    ),
    "smollm": (),
}
# They decide the bytes of every build: conversion, weight init, serialisation.
_TOOLCHAIN = ("torch", "transformers", "tokenizers", "safetensors")


def _find(module: str):
    """The module's spec without importing it (a missing parent package counts as missing)."""
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _require_sources(family: str) -> None:
    missing = [source for source in _SOURCES[family] if _find(source.module) is None]
    if not missing:
        return
    no_deps = list(dict.fromkeys(s.pip for s in missing if s.no_deps))
    with_deps = list(dict.fromkeys(s.pip for s in missing if not s.no_deps))
    commands = []
    if no_deps:
        commands.append("pip install --no-deps " + " ".join(no_deps))
    if with_deps:
        commands.append("pip install " + " ".join(f"'{p}'" if "[" in p else p for p in with_deps))
    names = ", ".join(s.module for s in missing)
    reasons = "".join(f" --no-deps: {s.no_deps}." for s in missing if s.no_deps)
    raise StandinSourceMissing(
        f"The {family} stand-in models are built from packages that are not installed "
        f"({names}). Install them with: {' && '.join(commands)}.{reasons}"
    )


def _package_file(module: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = _find(module)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder, relative)
        if candidate.is_file():
            return candidate
    pinned = [s.pip for sources in _SOURCES.values() for s in sources if s.module == module]
    raise StandinError(
        f"{module} is installed but has no {relative}; the stand-ins read it from "
        f"{pinned[0] if pinned else module}."
    )


def _key_inputs(family: str, shape: StandinShape, seed: int) -> dict[str, Any]:
    """Everything that decides a build's bytes: hashed into the folder name, kept in MANIFEST."""
    dists = [s.dist for s in _SOURCES[family]] + list(_TOOLCHAIN)
    versions = {dist: importlib.metadata.version(dist) for dist in dists}
    if family == "smollm":  # its tokenizer is trained on this Python's standard library
        versions["python"] = f"{platform.python_implementation()} {platform.python_version()}"
    return {
        "family": family,
        "shape": asdict(shape),
        "seed": seed,
        "format_version": FORMAT_VERSION,
        "versions": versions,
    }


# ---------------------------------------------------------------------------------------
# Public entry point


def build_standins(
    family: str, out_root: Path, shape: StandinShape = StandinShape(), seed: int = 0
) -> StandinPair:
    """Build (or find already built) the Base and Instruct stand-ins of `family`.

    Idempotent: the folder name carries a hash of every input, so an existing folder is
    complete and returned without rebuilding. Atomic: the build happens in a hidden folder
    next to the target and is renamed into place; a concurrent builder that loses the rename
    race drops its copy and returns the winner's.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown stand-in family {family!r}; choose one of {', '.join(FAMILIES)}")
    _require_sources(family)
    inputs = _key_inputs(family, shape, seed)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(out_root)
    target = root / f"{family}-{key}"
    pair = StandinPair(family=family, base=target / "base", instruct=target / "instruct")
    if target.is_dir():
        return pair
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=root))
    try:
        _BUILDERS[family](staging, shape, seed)
        (staging / MANIFEST).write_text(json.dumps(inputs, indent=2, sort_keys=True) + "\n")
        _make_shareable(staging)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return pair


def _make_shareable(staging: Path) -> None:
    """Readable by all, as a hub download is: mkdtemp makes the folder 0700 and transformers
    writes model.safetensors 0600, which would lock other users out of a shared cache."""
    os.chmod(staging, 0o755)
    for path in staging.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _publish(staging: Path, target: Path) -> bool:
    """Rename a finished build into place. False when another builder got there first (a
    rename onto a non-empty folder fails), which leaves the winner's folder untouched."""
    try:
        os.replace(staging, target)
    except OSError:
        if target.is_dir():
            return False
        raise
    return True


# ---------------------------------------------------------------------------------------
# Shared pieces: tokenizer and model folders


# from_pretrained bookkeeping that save_pretrained copies back out; a hub folder has neither.
_LOAD_ONLY_KEYS = ("is_local", "local_files_only")


def _save_tokenizer(tokenizer, folder: Path) -> None:
    tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if any(k in config for k in _LOAD_ONLY_KEYS):
        for k in _LOAD_ONLY_KEYS:
            config.pop(k, None)
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class _Variant:
    """What Base and Instruct of a family set differently in their model folders."""

    config: dict[str, Any]
    generation: dict[str, Any]
    dtype: str


def _save_models(
    staging: Path,
    config_cls: type,
    model_cls: type,
    shape: StandinShape,
    seed: int,
    common: dict[str, Any],
    variants: dict[str, _Variant],
) -> None:
    """Write base/ and instruct/ weights, config.json and generation_config.json.

    Base is the seeded random init; Instruct starts from Base's float32 weights and adds
    seeded noise of INSTRUCT_PERTURBATION of each tensor's norm (tied tensors once).
    """
    import torch
    from transformers import GenerationConfig

    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
        torch.manual_seed(seed)
        master = None
        for name in ("base", "instruct"):
            variant = variants[name]
            config = config_cls(**asdict(shape), **common, **variant.config)
            model = model_cls(config)
            if master is None:
                master = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                model.load_state_dict(master)
                noise = torch.Generator().manual_seed(seed + 1)
                with torch.no_grad():
                    for param in model.parameters():  # tied parameters appear once
                        delta = torch.randn(param.shape, generator=noise)
                        param.add_(delta * (INSTRUCT_PERTURBATION * param.norm() / delta.norm()))
            model.to(getattr(torch, variant.dtype))
            model.generation_config = GenerationConfig(**variant.generation)
            model.save_pretrained(staging / name)


# ---------------------------------------------------------------------------------------
# Mistral-7B-v0.3

MISTRAL_SPM = "data/mistral_instruct_tokenizer_240323.model.v3"
# What transformers needs to build the fast tokenizer from the SentencePiece file alone.
_MISTRAL_TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "add_bos_token": True,
    "add_eos_token": False,
    "legacy": False,
}


def _mistral_chat_template() -> str:
    # Imported here: mistral-common is only needed (and only installed) for rehearsals.
    from mistral_common.integrations.chat_templates.template_generator import (
        TemplateConfig,
        build_chat_template,
    )
    from mistral_common.tokens.tokenizers.base import TokenizerVersion

    return build_chat_template(
        TemplateConfig(version=TokenizerVersion.v3, spm=True, use_special_token_variables=True)
    )


def _build_mistral(staging: Path, shape: StandinShape, seed: int) -> None:
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    spm = _package_file("mistral_common", MISTRAL_SPM)
    source = staging / ".spm"
    source.mkdir()
    shutil.copyfile(spm, source / "tokenizer.model")
    (source / "tokenizer_config.json").write_text(json.dumps(_MISTRAL_TOKENIZER_CONFIG))
    tokenizer = AutoTokenizer.from_pretrained(source)
    shutil.rmtree(source)
    _expect_ids("mistral_v03", tokenizer, 32768, {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4})
    # Base ships no template; Instruct's is mistral-common's, which renders like the hub's.
    for name, template in (("base", None), ("instruct", _mistral_chat_template())):
        tokenizer.chat_template = template
        _save_tokenizer(tokenizer, staging / name)
        shutil.copyfile(spm, staging / name / "tokenizer.model")
    same = _Variant(config={}, generation={"bos_token_id": 1, "eos_token_id": 2}, dtype="bfloat16")
    _save_models(
        staging,
        MistralConfig,
        MistralForCausalLM,
        shape,
        seed,
        common={
            "vocab_size": 32768,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_window": None,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": None,  # the real model has none; the pipeline must cope
        },
        variants={"base": same, "instruct": same},
    )


def _expect_ids(family: str, tokenizer, size: int, ids: dict[str, int]) -> None:
    """Stop a build whose conversion no longer gives the real vocabulary (a changed source
    package or converter), rather than hand out a stand-in that silently differs."""
    got = {token: tokenizer.convert_tokens_to_ids(token) for token in ids}
    if len(tokenizer) != size or got != ids:
        raise StandinError(
            f"the {family} tokenizer converted to {len(tokenizer)} tokens with ids {got}; "
            f"the real one has {size} tokens and {ids}"
        )


# ---------------------------------------------------------------------------------------
# Llama-3.1-8B

LLAMA3_RANKS = "llama3/tokenizer.model"
# `Tokenizer.pat_str` and the special tokens of llama_models/llama3/tokenizer.py, in order:
# ids 128000..128255 after the 128,000 BPE ranks.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_NAMED = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
)
LLAMA3_SPECIAL_TOKENS = _LLAMA3_NAMED + tuple(
    f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(_LLAMA3_NAMED))
)
LLAMA31_TEMPLATE = "chat_templates/llama3_1.jinja"  # inside the installed trl package
_LLAMA31_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.9}


def _build_llama(staging: Path, shape: StandinShape, seed: int) -> None:
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = _package_file("llama_models", LLAMA3_RANKS)
    template = _package_file("trl", LLAMA31_TEMPLATE).read_text()
    # Converted once (~3 s) and shared: the wrapper deep-copies the backend it is given.
    # `extra_special_tokens` is the keyword that works (additional_special_tokens is ignored).
    core = TikTokenConverter(
        vocab_file=str(ranks), pattern=LLAMA3_PATTERN, extra_special_tokens=list(LLAMA3_SPECIAL_TOKENS)
    ).converted()
    # As on the hub: byte-level offsets, then <|begin_of_text|> before every sequence.
    bos = "<|begin_of_text|>"
    core.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, 128000)]
            ),
        ]
    )
    # Both carry the template (the hub's Base tokenizer_config does too); eos differs.
    # <|finetune_right_pad_id|> stays a reserved token: the real models set no pad.
    for name, eos in (("base", "<|end_of_text|>"), ("instruct", "<|eot_id|>")):
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=core,
            bos_token=bos,
            eos_token=eos,
            model_max_length=131072,
            clean_up_tokenization_spaces=True,
        )
        tokenizer.chat_template = template
        expected = {bos: 128000, "<|finetune_right_pad_id|>": 128004, "<|eot_id|>": 128009}
        _expect_ids("llama31", tokenizer, 128256, expected)
        _save_tokenizer(tokenizer, staging / name)
    stops = [128001, 128008, 128009]  # <|end_of_text|>, <|eom_id|>, <|eot_id|>
    _save_models(
        staging,
        LlamaConfig,
        LlamaForCausalLM,
        shape,
        seed,
        common={
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "bos_token_id": 128000,
            "pad_token_id": None,
        },
        variants={
            "base": _Variant(
                config={"eos_token_id": 128001},
                generation={"bos_token_id": 128000, "eos_token_id": 128001, **_LLAMA31_SAMPLING},
                dtype="bfloat16",
            ),
            "instruct": _Variant(
                config={"eos_token_id": stops},
                generation={"bos_token_id": 128000, "eos_token_id": stops, **_LLAMA31_SAMPLING},
                dtype="bfloat16",
            ),
        },
    )


# ---------------------------------------------------------------------------------------
# SmolLM-1.7B

SMOLLM_VOCAB = 49152
SMOLLM_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
)
# SmolLM-1.7B-Instruct's ChatML template: no default system prompt, no generation markers.
SMOLLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# 12 MB of the standard library reaches ~62k possible merges on CPython 3.11 (8 MB falls
# short of 49,152): a margin for other Python versions while training stays ~6 s.
SMOLLM_CORPUS_BYTES = 12 * 2**20
_NOT_STDLIB = frozenset({"site-packages", "dist-packages", "__pycache__"})


def stdlib_corpus(limit: int = SMOLLM_CORPUS_BYTES) -> list[str]:
    """The standard library's .py/.txt files in path order, up to `limit` bytes.

    Always present on any machine that runs this code, and the same on every run, so the
    trained vocabulary is reproducible; installed packages are left out (they differ).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in _NOT_STDLIB]
        files.extend(Path(folder, n) for n in names if n.endswith((".py", ".txt")))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    texts, total = [], 0
    for path in files:
        data = path.read_bytes()
        if total + len(data) > limit:
            break
        texts.append(data.decode("utf-8", errors="replace"))
        total += len(data)
    return texts


def train_bytelevel_bpe(texts: list[str], vocab_size: int, special_tokens: tuple[str, ...]):
    """A SmolLM-style tokenizer (`tokenizers.Tokenizer`) of exactly `vocab_size` tokens.

    Special tokens take ids 0..len-1, then the 256 byte symbols, then merges. Should the
    text run out of merges first, the rest is filled with `<|standin_filler_N|>` entries:
    no merge produces them and the pre-tokenizer splits such text apart, so encoding never
    emits them; they only occupy embedding rows, like a real vocabulary's unused tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    short = vocab_size - core.get_vocab_size()
    if short > 0:
        data = json.loads(core.to_str())
        vocab = data["model"]["vocab"]
        for i in range(short):
            vocab[f"<|standin_filler_{i}|>"] = len(vocab)
        core = Tokenizer.from_str(json.dumps(data))
    return core


def _build_smollm(staging: Path, shape: StandinShape, seed: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    core = train_bytelevel_bpe(stdlib_corpus(), SMOLLM_VOCAB, SMOLLM_SPECIAL_TOKENS)
    text_end, turn_start, turn_end = SMOLLM_SPECIAL_TOKENS[:3]
    roles = {
        # Base: one token is bos, eos and unk; no pad, no template.
        "base": {"bos_token": text_end, "eos_token": text_end, "unk_token": text_end},
        # Instruct: pad equals eos, so masking pads also masks every real eos.
        "instruct": {
            "bos_token": turn_start,
            "eos_token": turn_end,
            "pad_token": turn_end,
            "unk_token": text_end,
        },
    }
    for name, tokens in roles.items():
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=core, extra_special_tokens=list(SMOLLM_SPECIAL_TOKENS), **tokens
        )
        tokenizer.chat_template = SMOLLM_CHAT_TEMPLATE if name == "instruct" else None
        _expect_ids("smollm", tokenizer, SMOLLM_VOCAB, {t: i for i, t in enumerate(SMOLLM_SPECIAL_TOKENS)})
        _save_tokenizer(tokenizer, staging / name)
    _save_models(
        staging,
        LlamaConfig,
        LlamaForCausalLM,
        shape,
        seed,
        common={
            "vocab_size": SMOLLM_VOCAB,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True,
            "pad_token_id": None,
        },
        variants={
            # The hub's SmolLM-1.7B weights are float32 and its Instruct's bfloat16.
            "base": _Variant(
                config={"bos_token_id": 0, "eos_token_id": 0},
                generation={"bos_token_id": 0, "eos_token_id": 0},
                dtype="float32",
            ),
            "instruct": _Variant(
                config={"bos_token_id": 1, "eos_token_id": 2},
                generation={"bos_token_id": 1, "eos_token_id": 2},
                dtype="bfloat16",
            ),
        },
    )


_BUILDERS: dict[str, Callable[[Path, StandinShape, int], None]] = {
    "mistral_v03": _build_mistral,
    "llama31": _build_llama,
    "smollm": _build_smollm,
}
