"""Tiny bf16 model pairs for the merger's tests, built once per session.

A random tiny Mistral (hpcadapt.tiny) is the base; the "fine-tune" is a perturbed
copy, so tensor cosines sit near those of a real fine-tune and both SLERP branches
occur (norm weights stay nearly colinear and take the linear branch).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import json
import shutil
from pathlib import Path

import pytest

PAPER_T = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]


def derive_model(src: Path, dst: Path, noise: float, seed: int, dtype: str = "bfloat16") -> Path:
    """Copy a model folder, rewriting its weights as `dtype` plus relative Gaussian noise."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    state = load_file(src / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for i, (name, tensor) in enumerate(sorted(state.items())):
        tensor = tensor.float()
        if noise:
            scale = noise * (1 + i % 4) * (0.05 if "norm" in name else 1.0)
            tensor = tensor + scale * tensor.abs().mean() * torch.randn(tensor.shape, generator=generator)
        out[name] = tensor.to(getattr(torch, dtype)).contiguous()
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["dtype"] = dtype
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def random_mistral(folder: Path, hidden: int, intermediate: int, layers: int) -> Path:
    """A randomly initialised tiny Mistral with its tokenizer, saved to `folder`."""
    from hpcadapt.tiny import TinyShape, build_tiny_model_dir

    texts = [f"steel grain boundary {i} fatigue crack silk protein fibre" for i in range(300)]
    return build_tiny_model_dir(folder, texts, arch="mistral", vocab_size=320,
                                shape=TinyShape(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers), seed=0)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """{'base', 'tuned', 'other'}: a bf16 base and two perturbed fine-tunes of it (4 layers)."""
    root = tmp_path_factory.mktemp("merge-models")
    random_init = random_mistral(root / "init", hidden=64, intermediate=160, layers=4)
    return {
        "base": derive_model(random_init, root / "base", 0.0, 0),
        "tuned": derive_model(random_init, root / "tuned", 0.02, 1),
        "other": derive_model(random_init, root / "other", 0.03, 2),
    }


def slerp_config(models, t=None, **extra) -> dict:
    return {
        "merge_method": "slerp",
        "base_model": str(models["base"]),
        "slices": [{"sources": [{"model": str(models["base"]), "layer_range": [0, 4]},
                                {"model": str(models["tuned"]), "layer_range": [0, 4]}]}],
        "parameters": {"t": PAPER_T if t is None else t},
        "dtype": "bfloat16",
        **extra,
    }


def load_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
