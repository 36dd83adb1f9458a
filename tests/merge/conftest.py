"""Tiny bf16 model pairs for the merger's tests, built once per session.

A random tiny Mistral (hpcadapt.demo.tiny) is the base; the "fine-tune" is a perturbed
copy, so tensor cosines sit near those of a real fine-tune and both SLERP branches
occur (norm weights stay nearly colinear and take the linear branch).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from pathlib import Path

import pytest
from merge_helpers import derive_model, folder_bytes, merge_cli, random_mistral, write_recipe


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


@pytest.fixture(scope="module")
def uninterrupted(models, tmp_path_factory) -> dict[str, bytes]:
    """The output files of the command on write_recipe(models), run without interruption."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    result = merge_cli(write_recipe(models, folder), folder / "out")
    assert result.returncode == 0, result.stderr
    return folder_bytes(folder / "out")
