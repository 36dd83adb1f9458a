"""Domain gain against general ability: the trade-off the merge is meant to improve.

Adapting a model to a domain tends to cost it some of what its Instruct model could do
before. The paper merges the adapted model back with the Instruct model to keep that. So
every model of the chain is scored twice, on the domain benchmark and on a benchmark of
general ability, and the pair is reported with 95% bootstrap intervals and drawn as one
point per model: where the merge lands against both parents is the result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpcadapt.atomic import write_atomic

from .bootstrap import mean_interval
from .results import ALL_SETS, EvalResults


def metric_of(results: EvalResults) -> str:
    """Log-likelihood accuracy where scored (it moves with small models, whose replies often
    parse as nothing), else the paper's generate-and-parse accuracy."""
    return "loglik_acc" if "loglik" in results.protocols else "generate_acc"


def retention(domain: EvalResults, general: EvalResults, out_dir: Path, n_boot: int = 2000,
              seed: int = 0) -> dict[str, Any]:
    """Write retention.json, retention.md and domain_vs_general.png; return the rows."""
    metric = metric_of(domain)
    rows = {}
    for model in domain.models:
        rows[model] = {
            "domain": mean_interval(list(domain.scores(model, metric, ALL_SETS).values()), n_boot, seed).to_dict(),
            "general": mean_interval(list(general.scores(model, metric, ALL_SETS).values()), n_boot, seed).to_dict(),
        }
    report = {"metric": metric, "models": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "retention.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out_dir / "retention.md", render_markdown(report))
    plot_tradeoff(report, out_dir / "domain_vs_general.png")
    return report


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"| model | domain {report['metric']} [95% CI] | general {report['metric']} [95% CI] |",
             "|---|---|---|"]
    for model, row in report["models"].items():
        cells = [f"{row[k]['estimate']:.3f} [{row[k]['low']:.3f}, {row[k]['high']:.3f}]" for k in ("domain", "general")]
        lines.append(f"| {model} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def plot_tradeoff(report: dict[str, Any], path: Path) -> Path:
    from .plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for model, row in report["models"].items():
        d, g = row["domain"], row["general"]
        ax.errorbar(g["estimate"], d["estimate"], xerr=[[g["estimate"] - g["low"]], [g["high"] - g["estimate"]]],
                    yerr=[[d["estimate"] - d["low"]], [d["high"] - d["estimate"]]], fmt="o", capsize=3,
                    label=model)
        ax.annotate(model, (g["estimate"], d["estimate"]), fontsize=8, xytext=(5, 3), textcoords="offset points")
    ax.set_xlabel(f"general ability ({report['metric']})")
    ax.set_ylabel(f"domain ({report['metric']})")
    ax.set_title("Domain gain against general ability (95% bootstrap intervals)")
    ax.grid(alpha=0.3)
    return _save(fig, path)
