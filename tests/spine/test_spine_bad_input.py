"""Bad input fails before any training starts, with a clear message and nothing marked complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from spine_helpers import FAST, compose_cfg, write_toy_domain

from hpcadapt.errors import HpcadaptError
from hpcadapt.launch.local import run_local


def completed_stages(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "stages").glob("*") if (p / "manifest.json").is_file())


def run(root: Path, *overrides: str):
    cfg = compose_cfg([f"output_root={root}", *FAST, *overrides])
    return run_local(cfg)


def test_missing_dataset_file(tmp_path):
    data = write_toy_domain(tmp_path)
    (data / "domain_prefs.jsonl").unlink()
    with pytest.raises(
        HpcadaptError, match=r"data\.mixes\.preference\.sources\[0\].*domain_prefs\.jsonl does not exist"
    ):
        run(tmp_path)
    assert completed_stages(tmp_path) == []


def test_row_missing_field_names_file_and_line(tmp_path):
    data = write_toy_domain(tmp_path)
    lines = (data / "domain_chat.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"conversation": []})
    (data / "domain_chat.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(HpcadaptError, match=r"domain_chat\.jsonl:3: missing field 'messages'"):
        run(tmp_path)
    assert completed_stages(tmp_path) == []


def test_empty_dataset(tmp_path):
    data = write_toy_domain(tmp_path)
    (data / "domain_text.jsonl").write_text("")
    with pytest.raises(HpcadaptError, match=r"domain_text\.jsonl is empty"):
        run(tmp_path)
    assert completed_stages(tmp_path) == []


def test_start_model_without_chat_template(tmp_path):
    from hpcadapt.demo.tiny import build_tiny_model_dir

    write_toy_domain(tmp_path)
    model = build_tiny_model_dir(tmp_path / "no_template", ["some text for a tokenizer"] * 20, vocab_size=300)
    (model / "chat_template.jinja").unlink()
    with pytest.raises(HpcadaptError, match=r"no_template has no chat template.*model\.chat_template_file"):
        run(tmp_path, "pipeline.prepare=[]", f"model.instruct={model}", f"model.base={model}")
    assert completed_stages(tmp_path) == []


def test_missing_start_model_folder(tmp_path):
    write_toy_domain(tmp_path)
    with pytest.raises(HpcadaptError, match=r"model folder .*not_there does not exist"):
        run(tmp_path, "pipeline.prepare=[]", f"model.instruct={tmp_path}/not_there")


def test_pickled_checkpoint_refused(tmp_path):
    write_toy_domain(tmp_path)
    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(HpcadaptError, match=r"pickled weights; convert them to safetensors"):
        run(tmp_path, "pipeline.prepare=[]", f"model.instruct={model}")


def test_output_folder_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder cannot be created below a file, even as root
    with pytest.raises(HpcadaptError, match=r"output folder .*a_file/out is not writable"):
        run(blocker / "out")


def test_cli_exits_non_zero_with_one_paragraph(tmp_path):
    data = write_toy_domain(tmp_path)
    (data / "domain_text.jsonl").write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "hpcadapt", f"output_root={tmp_path}", *FAST],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert out.returncode == 2
    assert "hpcadapt: error:" in out.stderr and "Traceback" not in out.stderr
    assert completed_stages(tmp_path) == []
