"""`python -m hpcadapt` with no arguments: the whole tiny demo, on this machine's CPU.

This is the README's first command after installation. It must show real adaptation:
CPT lowers held-out domain perplexity against the start model, and the adapted models
beat the start model on the domain questions.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "hpcadapt", f"output_root={root}"], capture_output=True, text=True,
                         env={**os.environ, "WANDB_MODE": "offline"}, timeout=1200)
    return root, out, time.time() - started


def eval_results(root: Path) -> dict:
    run_dir = next((root / "runs").glob("tiny_demo-*"))
    return json.loads((run_dir / "eval" / "results.json").read_text())


def test_demo_runs_every_stage_and_prints_the_table(demo):
    root, out, seconds = demo
    assert out.returncode == 0, out.stderr[-3000:]
    for i, name in enumerate(["tiny_init", "base_pretrain", "instruct_sft", "cpt", "sft", "orpo", "merge", "eval"], 1):
        assert f"[stage {i}/8] {name}" in out.stdout
    assert "merged" in out.stdout and "Synergy " in out.stdout and "merged minus best parent" in out.stdout
    # Quiet by default: one line per stage start and end, the table once with its legend, the
    # verdict; libraries, W&B and DeepSpeed go to the stages' logs.
    lines = [ln for ln in out.stdout.splitlines() if ln.strip() and not ln.startswith("  cpt: step")]
    assert len(lines) <= 40, "\n".join(lines)
    assert len(re.findall(r"^\| model +\| ppl ", out.stdout, re.M)) == 1  # the table, once
    assert out.stdout.count("gen acc: the paper's") == 1
    for noise in ("wandb", "Setting accelerator", "remove_unused_columns", "Traceback"):
        assert noise not in out.stdout + out.stderr, noise
    run_dir = next((root / "runs").glob("tiny_demo-*"))
    assert (run_dir / "table.md").is_file() and (run_dir / "synergy.md").is_file()
    merged = run_dir / "merge"
    assert (merged / "model.safetensors.index.json").is_file() or (merged / "model.safetensors").is_file()
    print(f"demo wall time: {seconds:.0f} s")


def test_demo_shows_real_adaptation(demo):
    root, out, _ = demo
    summary = eval_results(root)
    ppl = {m: summary["perplexity"][m] for m in summary["perplexity"]}
    assert ppl["cpt"] < 0.5 * ppl["instruct"], ppl
    acc = {m: summary_accuracy(summary, m) for m in ("instruct", "cpt", "sft", "orpo", "merged")}
    assert max(acc["sft"], acc["orpo"]) > acc["instruct"] + 0.05, acc


def summary_accuracy(results: dict, model: str) -> float:
    """Overall log-likelihood accuracy of one model, from the per-question records."""
    records = results["records"][model]["loglik"]
    return sum(r["acc"] for r in records) / len(records)


def test_chat_answers_a_demo_question_with_the_merged_model(demo):
    root, _, _ = demo
    run_dir = next((root / "runs").glob("tiny_demo-*"))
    question = json.loads((root / "demo_data" / "benchmark_basic.jsonl").read_text().splitlines()[0])["question"]
    turns = [sys.executable, "-m", "hpcadapt.chat", str(run_dir / "merge"), "--prompt", question, "--prompt",
             "And why?", "--max-new-tokens", "16"]
    first, again = (subprocess.run(turns, capture_output=True, text=True, timeout=300) for _ in range(2))
    assert first.returncode == 0, first.stderr[-2000:]
    answers = first.stdout.strip().splitlines()
    assert len(answers) == 2 and all(a.strip() for a in answers)  # one reply per turn, through its template
    assert again.stdout == first.stdout  # greedy: the same question gets the same answer


def test_the_stored_merge_recipe_replays_byte_for_byte(demo, tmp_path):
    root, _, _ = demo
    merged = next((root / "runs").glob("tiny_demo-*")) / "merge"
    recipe = merged.resolve() / "mergekit_config.yml"
    command = str(Path(sys.executable).parent / "hpcadapt-merge")  # the installed entry point
    replay = subprocess.run([command, str(recipe), str(tmp_path / "replay")], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr[-2000:]
    for shard in merged.glob("*.safetensors"):
        assert (tmp_path / "replay" / shard.name).read_bytes() == shard.read_bytes(), shard.name


def test_demo_measures_general_ability_beside_the_domain(demo):
    """The merge's point: keep what the Instruct model could do while adding the domain."""
    root, out, _ = demo
    run_dir = next((root / "runs").glob("tiny_demo-*"))
    retention = json.loads((run_dir / "eval" / "retention.json").read_text())["models"]
    assert set(retention) == {"instruct", "cpt", "sft", "orpo", "merged"}
    # The Instruct model is a real starting point: above chance on general questions (half are
    # 4-choice, half True/False: chance is 0.375), with the interval's low end above it.
    assert retention["instruct"]["general"]["low"] > 0.375, retention["instruct"]
    assert (run_dir / "domain_vs_general.png").is_file() and "Domain against general ability" in out.stdout


def test_demo_numbers_do_not_depend_on_the_thread_setting(demo, tmp_path):
    """`make demo` runs without OMP_NUM_THREADS, the tests with 1; the demo fixes its own threads."""
    root, _, _ = demo
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    again = subprocess.run([sys.executable, "-m", "hpcadapt", f"output_root={tmp_path}"], capture_output=True,
                           text=True, env={**env, "WANDB_MODE": "offline"}, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    first, second = (next((r / "runs").glob("tiny_demo-*")) for r in (root, tmp_path))
    for name in ("table.md", "retention.md"):
        assert (second / name).read_text() == (first / name).read_text(), name
