"""A built wheel, installed elsewhere, finds its shipped configs and contains every module."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    return next(out.glob("hpcadapt-*.whl"))


def test_wheel_ships_every_module_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for src_root, pkg in ((REPO / "hpcadapt", "hpcadapt"), (REPO / "merge", "hpcadapt_merge"),
                          (REPO / "conf", "hpcadapt/conf")):
        for f in src_root.rglob("*"):
            if f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts:
                assert f"{pkg}/{f.relative_to(src_root).as_posix()}" in names, f"{f} is not in the wheel"


def test_installed_wheel_composes_from_elsewhere(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import hpcadapt.__main__ as m; print(m.conf_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()) == site / "hpcadapt" / "conf"
    out = subprocess.run([sys.executable, "-m", "hpcadapt", "+experiment=llama_orpo_slerp", "--cfg", "job"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "name: llama_orpo_slerp" in out.stdout and "meta-llama/Llama-3.1-8B-Instruct" in out.stdout
    # Users add their own config folder next to the shipped ones.
    own = tmp_path / "site_conf" / "experiment"
    own.mkdir(parents=True)
    (own / "my_site.yaml").write_text("# @package _global_\ndefaults:\n  - tiny_demo\npipeline:\n  name: mine\n")
    mine = subprocess.run([sys.executable, "-m", "hpcadapt", "--config-dir", str(tmp_path / "site_conf"),
                           "+experiment=my_site", "--cfg", "job"], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=120)
    assert mine.returncode == 0, mine.stderr
    assert "name: mine" in mine.stdout
