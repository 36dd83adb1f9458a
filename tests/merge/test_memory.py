"""TIES and DARE stream: no process holds whole tensors. Three parents of one 1.5B-shape embedding
(32768 x 2048 bf16, 134 MB each) merge in a few hundred MiB per process; holding the tensors,
their task vectors and masks would take over 1 GiB."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

pytestmark = pytest.mark.slow
NAME, SHAPE = "model.embed_tokens.weight", (32768, 2048)


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    root = tmp_path_factory.mktemp("big-embedding")
    generator = torch.Generator().manual_seed(0)
    base = 0.02 * torch.randn(SHAPE, generator=generator)
    folders = {}
    for index, name in enumerate(("base", "tuned", "other")):
        folder = root / name
        folder.mkdir()
        tensor = base if index == 0 else base + 0.002 * index * torch.randn(SHAPE, generator=generator)
        save_file({NAME: tensor.bfloat16()}, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "vocab_size": SHAPE[0]}))
        folders[name] = folder
    return folders


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_ties_and_dare_use_bounded_memory(parents, tmp_path, method):
    config = {"merge_method": method, "base_model": str(parents["base"]), "dtype": "bfloat16",
              "models": [{"model": str(parents["tuned"]), "parameters": {"weight": 0.6, "density": 0.5}},
                         {"model": str(parents["other"]), "parameters": {"weight": 0.4, "density": 0.3}}]}
    script = ("import json, sys; from hpcadapt_merge import run_merge; "
              "s = run_merge(json.loads(sys.argv[1]), sys.argv[2], workers=2, progress=False, fsync=False); "
              "print(s.peak_rss, s.peak_rss_total)")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(config), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak, total = map(int, done.stdout.split())
    assert peak < 600 * 2**20, f"{peak / 2**20:.0f} MiB in one process"
