"""Tiny Llama/Mistral models and BPE tokenizers built locally, with no hub access.

The demo and the tests need real Hugging Face model directories (safetensors,
tokenizer, chat template, generation config) that behave like the 7B ones in every
way the pipeline cares about, but train in seconds on a CPU. Everything here is
built from scratch: a byte-level BPE tokenizer trained on the caller's text, and a
randomly initialised decoder of about a million parameters.

The tokenizer deliberately has distinct bos/eos/pad tokens and a chat template with
`{% generation %}` markers, because those are exactly the things whose absence
breaks SFT (assistant-only loss) and preference training on real models.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# Each turn is "<|role|>\n content <|end|>\n"; assistant turns end with eos instead so
# the model learns to stop. Only the assistant content and its eos are inside the
# generation markers, which is what assistant-only loss trains on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinyShape:
    """Decoder dimensions. The defaults give ~1.3M parameters with a 2048 vocabulary."""

    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """Train a byte-level BPE tokenizer on `texts` and wrap it for transformers.

    Returns a `PreTrainedTokenizerFast` that prepends bos to plain text (as Llama's
    does) but not to chat-templated text, whose template already starts with bos.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, EOS, PAD, UNK, *ROLE_TOKENS]
    core = Tokenizer(models.BPE(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=1024,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, arch: str = "llama", shape: TinyShape = TinyShape(), seed: int = 0):
    """A randomly initialised Llama or Mistral decoder sized for `tokenizer`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        config, model_cls = LlamaConfig(**common), LlamaForCausalLM
    elif arch == "mistral":
        config, model_cls = MistralConfig(sliding_window=None, **common), MistralForCausalLM
    else:
        raise ValueError(f"tiny model arch must be 'llama' or 'mistral', got {arch!r}")
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    return model


def save_pretrained_dir(model, tokenizer, out_dir: str | Path) -> Path:
    """Write a complete model directory: safetensors weights, config, tokenizer, template."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_model_dir(
    out_dir: str | Path,
    texts: Iterable[str],
    arch: str = "llama",
    vocab_size: int = 2048,
    shape: TinyShape = TinyShape(),
    seed: int = 0,
) -> Path:
    """Tokenizer + random model, saved to `out_dir`. The usual entry point for tests."""
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    model = build_model(tokenizer, arch=arch, shape=shape, seed=seed)
    return save_pretrained_dir(model, tokenizer, out_dir)
