"""Builders and readers shared by the merger's tests (a module of its own: `conftest` is a
name every test folder has, so importing from it picks whichever was imported first)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hpcadapt_merge.schedule import PAPER_SLERP_T

CLI = [sys.executable, "-m", "hpcadapt_merge.cli"]  # the merger's command, run by this interpreter
NEW_TOKEN = "<|newtok|>"
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


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
    from hpcadapt.demo.tiny import TinyShape, build_tiny_model_dir

    texts = [f"steel grain boundary {i} fatigue crack silk protein fibre" for i in range(300)]
    return build_tiny_model_dir(folder, texts, arch="mistral", vocab_size=320,
                                shape=TinyShape(hidden_size=hidden, intermediate_size=intermediate,
                                                num_hidden_layers=layers), seed=0)


def grow_vocabulary(src: Path, dst: Path, tokens=(NEW_TOKEN,), seed: int = 5) -> Path:
    """A copy of `src` with `tokens` appended to its tokenizer and one new row per token in its
    embeddings and output layer (as resize_token_embeddings leaves them), and its own chat template."""
    import torch
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    shutil.copytree(src, dst)
    tokenizer = Tokenizer.from_file(str(dst / "tokenizer.json"))
    assert tokenizer.add_tokens(list(tokens)) == len(tokens)
    tokenizer.save(str(dst / "tokenizer.json"))
    state = load_file(dst / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    for name in VOCAB_TENSORS:
        extra = 0.02 * torch.randn(len(tokens), state[name].shape[1], generator=generator)
        state[name] = torch.cat([state[name], extra.to(state[name].dtype)]).contiguous()
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["vocab_size"] += len(tokens)
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    return dst


def slerp_config(models, t=None, **extra) -> dict:
    return {
        "merge_method": "slerp",
        "base_model": str(models["base"]),
        "slices": [{"sources": [{"model": str(models["base"]), "layer_range": [0, 4]},
                                {"model": str(models["tuned"]), "layer_range": [0, 4]}]}],
        "parameters": {"t": PAPER_SLERP_T if t is None else t},
        "dtype": "bfloat16",
        **extra,
    }


def write_recipe(models, folder: Path, **changes) -> Path:
    """slerp_config(models) with `changes`, as folder/merge.yml."""
    import yaml

    config = slerp_config(models)
    config.update(changes)
    path = folder / "merge.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def merge_cli(recipe: Path, out: Path, kill_at: str | None = None, workers: int = 2) -> subprocess.CompletedProcess:
    """The merger's command on `recipe` (100 KB shards), killed with SIGKILL at `kill_at` when given."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HPCADAPT_MERGE_KILL_AT", None)
    if kill_at:
        env["HPCADAPT_MERGE_KILL_AT"] = kill_at
    return subprocess.run([*CLI, str(recipe), str(out), "--workers", str(workers), "--out-shard-size", "100KB"],
                          env=env, capture_output=True, text=True, timeout=120)


def load_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
