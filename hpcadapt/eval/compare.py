"""The comparison across strategies: which strategy's final model answers best, and which
differences are real.

Every strategy of a grid is evaluated on the same questions, so differences are paired:
resampling questions (not models) keeps each question's difficulty shared between the
strategies compared. Each strategy is represented by its final model (the merge for a
`-SLERP` strategy, else its last stage). Reported: accuracy per benchmark set and per
category with 95% bootstrap intervals, the ranking, each strategy minus the best with a
paired-bootstrap interval, each merged strategy's synergy verdict against its own two
parents, and the compute each strategy consumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcadapt.atomic import write_atomic

from .bootstrap import Interval, mean_interval, percentile_interval
from .results import ALL_SETS, EvalResults


@dataclass(frozen=True)
class StrategyResult:
    name: str
    final_label: str  # the model of its evaluation that stands for the strategy
    training_stages: int
    eval_dir: Path
    synergy_verdict: str | None
    compute: dict[str, float]  # {"stage_seconds": s, "gpu_hours": h} over the strategy's stages


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> Interval:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    return percentile_interval(float(a.mean() - b.mean()), a[idx].mean(axis=1) - b[idx].mean(axis=1))


def combined_results(strategies: list[StrategyResult]) -> EvalResults:
    """One EvalResults with each strategy's final model, named by the strategy."""
    first = EvalResults.load(strategies[0].eval_dir / "results.json")
    combined = EvalResults(models={}, sets=first.sets, protocols=first.protocols, meta={"strategies": True})
    for s in strategies:
        combined.add_model(s.name, EvalResults.load(s.eval_dir / "results.json"), s.final_label)
    return combined


def compare(strategies: list[StrategyResult], out_dir: Path, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Write report.json, report.md and the plots into `out_dir`; return the report."""
    results = combined_results(strategies)
    metric = "generate_acc" if "generate" in results.protocols else results.metrics()[0]
    keys = sorted(results.scores(strategies[0].name, metric))
    vectors = {s.name: np.array([results.scores(s.name, metric)[k] for k in keys], dtype=float) for s in strategies}
    rows = []
    for s in strategies:
        row = {"strategy": s.name, "training_stages": s.training_stages, "synergy": s.synergy_verdict,
               "compute": s.compute, "overall": mean_interval(vectors[s.name], n_boot, seed).to_dict(), "sets": {},
               "categories": {}}
        for set_name in results.sets:
            scores = np.array(list(results.scores(s.name, metric, set_name).values()), dtype=float)
            row["sets"][set_name] = mean_interval(scores, n_boot, seed).to_dict()
        for category in results.categories():
            scores = np.array(list(results.scores(s.name, metric, ALL_SETS, category).values()), dtype=float)
            row["categories"][category] = mean_interval(scores, n_boot, seed).to_dict()
        rows.append(row)
    rows.sort(key=lambda r: -r["overall"]["estimate"])
    best = rows[0]["strategy"]
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        difference = paired_difference(vectors[row["strategy"]], vectors[best], n_boot, seed)
        row["minus_best"] = difference.to_dict()
        row["differs_from_best"] = row["strategy"] != best and difference.excludes_zero
    report = {"metric": metric, "questions": len(keys), "best": best, "bootstrap_samples": n_boot,
              "strategies": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out_dir / "report.md", render_markdown(report, results.sets))
    plot_strategies(rows, out_dir / "accuracy_by_strategy.png", metric)
    plot_against_stages(rows, out_dir / "accuracy_vs_stages.png", metric)
    return report


def render_markdown(report: dict[str, Any], sets: list[str]) -> str:
    lines = [f"# Strategy comparison ({report['metric']}, {report['questions']} questions, 95% bootstrap intervals)",
             "", "| rank | strategy | overall | " + " | ".join(sets) + " | minus best | synergy | stage-hours |",
             "|" + "---|" * (6 + len(sets))]
    for r in report["strategies"]:
        overall = Interval(**r["overall"])
        cells = [f"{Interval(**r['sets'][s]).estimate:.3f}" for s in sets]
        diff = "best" if r["strategy"] == report["best"] else (str(Interval(**r["minus_best"])) +
                                                             (" *" if r["differs_from_best"] else ""))
        hours = r["compute"]["stage_seconds"] / 3600
        lines.append(f"| {r['rank']} | {r['strategy']} | {overall.estimate:.3f} [{overall.low:.3f}, "
                     f"{overall.high:.3f}] | " + " | ".join(cells) + f" | {diff} | {r['synergy'] or '-'} | "
                     f"{hours:.3f} |")
    lines += ["", "`minus best`: paired-bootstrap difference to the best strategy; `*` when its interval excludes 0.",
              "`synergy`: a merged strategy against its own two parents (hpcadapt/eval/synergy.py).",
              "`stage-hours`: wall time of the strategy's stages (a stage shared with others counts in each)."]
    return "\n".join(lines) + "\n"


def plot_strategies(rows: list[dict[str, Any]], path: Path, metric: str) -> Path:
    from .plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.5))
    names = [r["strategy"] for r in rows][::-1]
    est = np.array([r["overall"]["estimate"] for r in rows][::-1])
    low = est - np.array([r["overall"]["low"] for r in rows][::-1])
    high = np.array([r["overall"]["high"] for r in rows][::-1]) - est
    ax.errorbar(est, range(len(names)), xerr=[low, high], fmt="o", capsize=3)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(f"{metric} (95% bootstrap interval)")
    ax.set_title("Accuracy by strategy")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_against_stages(rows: list[dict[str, Any]], path: Path, metric: str) -> Path:
    from .plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        x = r["training_stages"] + (0.15 if r["strategy"].upper().endswith("SLERP") else 0)
        ax.errorbar(x, r["overall"]["estimate"], yerr=[[r["overall"]["estimate"] - r["overall"]["low"]],
                                                       [r["overall"]["high"] - r["overall"]["estimate"]]],
                    fmt="o", capsize=3)
        ax.annotate(r["strategy"], (x, r["overall"]["estimate"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    ax.set_xlabel("training stages (merged strategies offset right)")
    ax.set_ylabel(metric)
    ax.set_title("Accuracy against the number of training stages")
    ax.grid(alpha=0.3)
    return _save(fig, path)
