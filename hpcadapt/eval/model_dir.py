"""Checking and loading model folders for evaluation.

The checks read only small JSON files, so a missing tokenizer or chat template (the
cause of silently garbled benchmark answers) is reported before any weights load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from hpcadapt.errors import HpcadaptError

if TYPE_CHECKING:
    from hpcadapt_merge.tokenizer import TokenizerMatch


class ModelDirError(HpcadaptError, ValueError):
    """A model folder that cannot be evaluated as it stands."""


def check_model_dir(path: str | Path, name: str = "model", require_template: bool = True) -> Path:
    """Validate a complete HF model folder: config, safetensors weights, tokenizer, chat template.

    `require_template=False` admits a Base model, which the benchmark asks in plain text."""
    folder = Path(path)
    label = f"{name} ({folder})"
    if not folder.is_dir():
        raise ModelDirError(f"{label}: model folder not found")
    if not (folder / "config.json").is_file():
        raise ModelDirError(f"{label}: no config.json, expected a complete Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        raise ModelDirError(f"{label}: no *.safetensors weights (weights are only loaded from safetensors)")
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise ModelDirError(f"{label}: no tokenizer (tokenizer.json or tokenizer.model)")
    if require_template and chat_template_of(folder) is None:
        raise ModelDirError(
            f"{label}: no chat template (chat_template.jinja or 'chat_template' in tokenizer_config.json); "
            "the benchmark prompt is applied through the model's own template and there is no silent fallback"
        )
    return folder


def chat_template_of(folder: Path) -> str | None:
    """The chat template text stored in a model folder, or None."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        template = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template")
        if template:
            return template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return None


def check_same_tokenizer(dirs: dict[str, str | Path]) -> TokenizerMatch:
    """Raise unless the named model folders tokenize text alike (merge parents and merges must).

    The merger's rule decides (hpcadapt_merge.tokenizer.compare_tokenizers): a vocabulary grown only by
    appended tokens (a pad token added during training) still tokenizes every text the same way, so it
    counts as the same tokenizer. Returns the merger's verdict (exact, or which folder is the larger)."""
    from hpcadapt_merge.checkpoint import CheckpointError
    from hpcadapt_merge.tokenizer import compare_tokenizers

    folders = {name: check_model_dir(path, name) for name, path in dirs.items()}
    try:
        return compare_tokenizers(list(folders.values()), require=True)
    except CheckpointError as e:
        detail = ", ".join(f"{name}={Path(dirs[name])}" for name in folders)
        raise ModelDirError(
            f"models have different tokenizers ({detail}): a merge and its parents must share one "
            f"vocabulary, or their scores are not comparable; {e}"
        ) from None


def num_layers_of(folder: str | Path) -> int:
    """num_hidden_layers from a model folder's config.json: schedules spread over it, never a constant."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise ModelDirError(f"{config_file}: not found; the layer count of a t schedule comes from it")
    from hpcadapt_merge.checkpoint import CheckpointError, layer_count

    try:
        return layer_count(json.loads(config_file.read_text(encoding="utf-8")), config_file)
    except CheckpointError as e:
        raise ModelDirError(str(e)) from None


def pick_device(device: str | None) -> str:
    """The caller's device, else CUDA when present, else CPU."""
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out everywhere here, so reusing eos is harmless at eval time.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(folder: str | Path, device: str, trust_remote_code: bool = False):
    """Load weights from safetensors in bf16 on GPU and float32 on CPU, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model.to(device).eval()
