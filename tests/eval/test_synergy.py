"""Synergy report and schedule sweep on tiny real models, plus the verdict on known data."""

from __future__ import annotations

import json

import pytest

from hpcadapt.eval.model_dir import ModelDirError
from hpcadapt.eval.results import EvalResults
from hpcadapt.eval.sweep import PAPER_T, sweep_schedules
from hpcadapt.eval.synergy import log_synergy_to_wandb, synergy_report

SCHEDULES = {"base_only": 0.0, "constant_0.5": 0.5, "paper": PAPER_T}


def flat_logliks(records: dict) -> list[float]:
    return [ll for r in records["loglik"] for ll in r["choice_loglik"]]


@pytest.fixture(scope="module")
def sweep(untrained_dir, trained_dir, bench_file, heldout_file):
    return sweep_schedules(untrained_dir, trained_dir, [bench_file], schedules=SCHEDULES, include_defaults=False,
                           heldout_file=heldout_file, batch_size=8)


@pytest.fixture(scope="module")
def with_merged(eval_results, sweep):
    results = EvalResults.from_dict(json.loads(json.dumps(eval_results[0].to_dict())))
    results.add_model("merged", sweep.results, "paper")
    return results


def test_sweep_t0_is_the_base_parent_and_matches_merge_to_disk(sweep, eval_results, untrained_dir, trained_dir,
                                                                 bench_file, tmp_path):
    results, _ = eval_results
    base_only = sweep.results.records["base_only"]
    assert flat_logliks(base_only) == pytest.approx(flat_logliks(results.records["untrained"]), abs=1e-5)
    assert sweep.results.perplexity["base_only"] == pytest.approx(results.perplexity["untrained"], rel=1e-5)

    from hpcadapt_merge import run_merge

    config = {"merge_method": "slerp", "base_model": str(untrained_dir),
              "models": [{"model": str(untrained_dir)}, {"model": str(trained_dir)}],
              "parameters": {"t": PAPER_T}, "dtype": "float32"}
    run_merge(config, tmp_path / "merged", workers=1, progress=False)
    from hpcadapt.eval.suite import evaluate_models

    on_disk = evaluate_models({"merged": tmp_path / "merged"}, [bench_file], None, tmp_path / "eval", batch_size=8)
    in_memory = sweep.results.records["paper"]
    assert flat_logliks(in_memory) == pytest.approx(flat_logliks(on_disk.records["merged"]), abs=1e-4)
    assert [r["reply"] for r in in_memory["generate"]] == [r["reply"] for r in on_disk.records["merged"]["generate"]]


def test_report_files_plots_and_ranking(with_merged, sweep, tmp_path):
    report = synergy_report(with_merged, "merged", ("untrained", "trained"), tmp_path / "report",
                            n_boot=300, seed=1, t_spec=PAPER_T, sweep=sweep)
    out = tmp_path / "report"
    for name in ("report.md", "report.json", "accuracy_by_category.png", "t_schedule.png", "score_vs_schedule.png"):
        assert (out / name).is_file(), name
    assert all((out / n).read_bytes().startswith(b"\x89PNG") for n in ("t_schedule.png", "score_vs_schedule.png"))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging leftovers
    saved = json.loads((out / "report.json").read_text())
    assert saved["synergy"] is False  # the trained parent is perfect; nothing can beat it
    assert saved["schedule"]["num_layers"] == 4
    assert [row["score"] for row in saved["sweep"]] == sorted((row["score"] for row in saved["sweep"]), reverse=True)
    assert {row["name"] for row in saved["sweep"]} == set(SCHEDULES)
    groups = {(c["metric"], c["group"]) for c in saved["comparisons"]}
    assert {("generate_acc", "all"), ("loglik_acc_norm", "basic"), ("loglik_acc", "advanced")} <= groups
    text = report.summary_text()
    assert "merged - best parent" in text and "verdict" in text
    assert "## Schedule sweep" in (out / "report.md").read_text()
    # the same seed gives the same report
    again = synergy_report(with_merged, "merged", ("untrained", "trained"), tmp_path / "again", n_boot=300, seed=1)
    assert again.overall().vs_best == report.overall().vs_best


def test_verdict_is_synergy_only_when_interval_excludes_zero(tmp_path):
    def records(correct):
        return {"generate": [{"id": f"q{i}", "set": "s", "category": "c" + str(i % 2), "gold": "A", "reply": "A",
                              "parsed": "A", "unparseable": False, "acc": float(ok)} for i, ok in enumerate(correct)]}

    n = 200
    scores = {"a": [i % 2 == 0 for i in range(n)], "b": [i % 3 == 0 for i in range(n)],
              "clear": [i % 10 != 0 for i in range(n)], "tie": [i % 2 == 0 for i in range(n)]}
    results = EvalResults(models={k: k for k in scores}, sets=["s"], protocols=("generate",),
                          records={k: records(v) for k, v in scores.items()})
    clear = synergy_report(results, "clear", ("a", "b"), tmp_path / "clear", n_boot=500)
    assert clear.synergy and clear.overall().verdict == "synergy"
    assert clear.overall().vs_best.estimate == pytest.approx(0.9 - 0.5)
    assert "Verdict (generate_acc, overall): synergy" in (tmp_path / "clear" / "report.md").read_text()
    tie = synergy_report(results, "tie", ("a", "b"), tmp_path / "tie", n_boot=500)
    assert not tie.synergy and tie.overall().verdict == "not established"
    with pytest.raises(ValueError, match="two distinct parents"):
        synergy_report(results, "a", ("a", "b"), tmp_path / "x")
    with pytest.raises(ValueError, match="no entry of the parameter matches"):
        synergy_report(
            results, "clear", ("a", "b"), tmp_path / "x", t_spec=[{"filter": "mlp", "value": 0.5}], num_layers=4
        )
    with pytest.raises(ValueError, match="no model folder to read num_hidden_layers"):
        synergy_report(results, "clear", ("a", "b"), tmp_path / "x", t_spec=0.5)
    assert not (tmp_path / "x").exists()


def test_parents_with_different_tokenizers_are_refused(untrained_dir, bench_file, tmp_path, eval_results, monkeypatch):
    import hpcadapt.eval.sweep as sweep_module
    from hpcadapt.demo.tiny import build_tiny_model_dir

    other = build_tiny_model_dir(tmp_path / "other", ["completely different words here"] * 20, vocab_size=300)
    monkeypatch.setattr(sweep_module, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ModelDirError, match="different tokenizers"):
        sweep_schedules(untrained_dir, other, [bench_file])
    results = EvalResults.from_dict(json.loads(json.dumps(eval_results[0].to_dict())))
    results.add_model("merged", results, "trained")
    results.models["trained"] = str(other)
    with pytest.raises(ModelDirError, match="different tokenizers"):
        synergy_report(results, "merged", ("untrained", "trained"), tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_wandb_logging_offline(with_merged, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    # wandb.init exports its service's address; unset it again after the test so later
    # subprocesses (and Slurm jobs, which inherit the environment) do not see it.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    report = synergy_report(with_merged, "merged", ("untrained", "trained"), tmp_path / "report", n_boot=100)
    run = wandb.init(mode="offline", dir=str(tmp_path), project="hpcadapt-test", group="pipeline-1", job_type="eval")
    try:
        log_synergy_to_wandb(report, run)
        assert run.summary["synergy_verdict"] == report.overall().verdict
        assert run.summary["synergy/generate_acc/all/vs_best"] == pytest.approx(report.overall().vs_best.estimate)
    finally:
        run.finish()
        wandb.teardown()
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_command_line_report_from_saved_results(eval_results, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    results = EvalResults.from_dict(json.loads(json.dumps(eval_results[0].to_dict())))
    results.add_model("merged", results, "trained")
    results.save(tmp_path / "eval")
    tool = Path(__file__).resolve().parents[2] / "tools" / "synergy_report.py"
    run = subprocess.run(
        [
            sys.executable,
            str(tool),
            str(tmp_path / "eval"),
            "--merged",
            "merged",
            "--parents",
            "untrained",
            "trained",
            "--out",
            str(tmp_path / "report"),
            "--n-boot",
            "200",
            "--t-spec",
            "[0, 1]",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "verdict: NOT ESTABLISHED" in run.stdout and "| merged" in run.stdout
    assert (tmp_path / "report" / "t_schedule.png").is_file()
    bad = subprocess.run(
        [
            sys.executable,
            str(tool),
            str(tmp_path / "eval"),
            "--merged",
            "nope",
            "--parents",
            "untrained",
            "trained",
            "--out",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "error: model(s) ['nope'] not in the evaluation results" in bad.stderr


def test_bad_schedule_is_refused_before_loading(untrained_dir, trained_dir, bench_file, monkeypatch):
    import hpcadapt.eval.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match=r"schedule 'mine' gives t=1.5 for .*; t must lie in \[0, 1\]"):
        sweep_schedules(untrained_dir, trained_dir, [bench_file], schedules={"mine": [0.0, 1.5]})
