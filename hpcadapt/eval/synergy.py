"""The synergy report: does the SLERP merge beat both of its parents, and how sure are we?

For each metric (the paper's greedy-answer accuracy and the log-likelihood ones) and
each group of questions (overall, per set, per category) it gives merged − best
parent and merged − parents' mean with paired bootstrap 95% intervals. "Synergy" is
claimed only where the interval of merged − best parent lies entirely above zero; a
positive estimate whose interval covers zero is reported as "not established".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcadapt.atomic import write_atomic

from .bootstrap import Interval, paired_bootstrap
from .model_dir import check_same_tokenizer, num_layers_of
from .results import ALL_SETS, EvalResults

PRIMARY_ORDER = ("generate_acc", "loglik_acc_norm", "loglik_acc")


@dataclass
class GroupComparison:
    """One group of questions under one metric."""

    metric: str
    group: str
    n: int
    accuracy: dict[str, float]
    vs_best: Interval
    vs_mean: Interval

    @property
    def verdict(self) -> str:
        if self.vs_best.low > 0:
            return "synergy"
        if self.vs_best.high < 0:
            return "worse than best parent"
        return "not established"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "group": self.group, "n": self.n, "accuracy": self.accuracy,
                "vs_best": self.vs_best.to_dict(), "vs_mean": self.vs_mean.to_dict(), "verdict": self.verdict}


@dataclass
class SynergyReport:
    merged: str
    parents: tuple[str, str]
    primary_metric: str
    comparisons: list[GroupComparison]
    n_boot: int
    seed: int
    per_question: list[dict] = field(default_factory=list)
    schedule: dict | None = None
    sweep: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def overall(self, metric: str | None = None) -> GroupComparison:
        metric = metric or self.primary_metric
        return next(c for c in self.comparisons if c.metric == metric and c.group == ALL_SETS)

    @property
    def synergy(self) -> bool:
        """True only when merged − best parent is above zero with 95% confidence, overall."""
        return self.overall().verdict == "synergy"

    def summary_text(self) -> str:
        head = self.overall()
        acc = ", ".join(f"{name} {value:.3f}" for name, value in head.accuracy.items())
        lines = [
            f"Synergy report ({self.primary_metric}, n={head.n}, {self.n_boot} paired bootstrap resamples, "
            f"seed {self.seed})",
            f"  accuracy: {acc}",
            f"  merged - best parent:  {head.vs_best}",
            f"  merged - parents mean: {head.vs_mean}",
            f"  verdict: {head.verdict.upper()}"
            + ("" if self.synergy else " (synergy is claimed only when the 95% interval excludes zero)"),
        ]
        if self.sweep:
            best = self.sweep[0]
            lines.append(f"  best of {len(self.sweep)} schedules: {best['name']} ({best['score']:.3f})")
        if "report.md" in self.files:
            lines.append(f"  report: {self.files['report.md']}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "merged": self.merged,
            "parents": list(self.parents),
            "primary_metric": self.primary_metric,
            "synergy": self.synergy,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "schedule": self.schedule,
            "sweep": self.sweep,
            "files": self.files,
            "per_question": self.per_question,
        }


def synergy_report(
    results: EvalResults,
    merged: str,
    parents: tuple[str, str],
    out_dir,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    t_spec: Any = None,
    num_layers: int | None = None,
    sweep=None,
) -> SynergyReport:
    """Compare `merged` against its two `parents` in `results`; write report.md, report.json, PNGs.

    `sweep` (a sweep.SweepResult) adds the ranking of several schedules and the
    score-against-schedule plot. `t_spec` adds the schedule-over-depth plot; the layer
    count is read from the merged model's (else a parent's) config.json when not given.
    """
    from hpcadapt_merge.plot import plot_schedule, schedule_curves
    from hpcadapt_merge.schedule import resolve_t

    from .plots import plot_accuracy_by_group, plot_sweep

    validate_roles(results, merged, parents)
    out = Path(out_dir)
    metrics = [m for m in PRIMARY_ORDER if m in results.metrics()]
    groups = comparison_groups(results)
    comparisons = [
        compare_group(results, metric, merged, parents, set_name, category, label, n_boot, seed)
        for metric in metrics
        for label, (set_name, category) in groups.items()
    ]
    report = SynergyReport(merged, tuple(parents), metrics[0], comparisons, n_boot, seed)
    report.per_question = per_question_rows(results, [parents[0], parents[1], merged], metrics)

    if t_spec is not None:
        num_layers = num_layers or schedule_layers(results, (merged, *parents))
        # A norm tensor matches neither attention nor MLP filters: the schedule needs an entry for it.
        resolve_t(f"model.layers.{num_layers - 1}.input_layernorm.weight", t_spec, num_layers)
        report.schedule = {
            "t_spec": t_spec,
            "num_layers": num_layers,
            "t_per_layer": schedule_curves(t_spec, num_layers),
        }
    if sweep is not None:
        report.sweep = rank_sweep(sweep, results, parents, report.primary_metric, n_boot, seed)

    # Everything is validated and computed; only writing is left.
    accuracy = {
        m: {f"{c.group} (n={c.n})": c.accuracy[m] for c in comparisons if c.metric == report.primary_metric}
        for m in (*parents, merged)
    }
    files = {
        "accuracy_by_category.png": plot_accuracy_by_group(
            accuracy, f"accuracy per group ({report.primary_metric})", out / "accuracy_by_category.png"
        )
    }
    if report.schedule:
        files["t_schedule.png"] = plot_schedule(t_spec, num_layers, out / "t_schedule.png")
    if report.sweep:
        reference = {p: report.overall().accuracy[p] for p in parents}
        scores = {row["name"]: row["score"] for row in report.sweep}
        files["score_vs_schedule.png"] = plot_sweep(
            scores, reference, report.primary_metric, out / "score_vs_schedule.png"
        )
    report.files = {name: str(path) for name, path in files.items()}
    report.files["report.md"] = str(out / "report.md")
    report.files["report.json"] = str(out / "report.json")
    write_atomic(out / "report.json", json.dumps(report.to_dict(), indent=1, default=str))
    write_atomic(out / "report.md", render_markdown(report))
    return report


def schedule_layers(results: EvalResults, names) -> int:
    """The layer count for the schedule plot, from the first model folder that exists."""
    folders = [results.models[name] for name in names if Path(results.models[name]).is_dir()]
    if not folders:
        raise ValueError("t_spec given without num_layers, and no model folder to read num_hidden_layers from")
    return num_layers_of(folders[0])


def validate_roles(results: EvalResults, merged: str, parents: tuple[str, str]) -> None:
    """Names exist, differ, were scored on identical questions, and the parents share a tokenizer."""
    if len(parents) != 2 or len({merged, *parents}) != 3:
        raise ValueError(f"need a merged model and two distinct parents, got merged={merged!r}, parents={parents!r}")
    missing = [name for name in (merged, *parents) if name not in results.records]
    if missing:
        raise ValueError(f"model(s) {missing} not in the evaluation results (have {sorted(results.records)})")
    metric = results.metrics()[0]
    keys = {name: sorted(results.scores(name, metric)) for name in (merged, *parents)}
    if len({tuple(k) for k in keys.values()}) != 1:
        raise ValueError("the merged model and its parents were not scored on identical questions")
    dirs = {name: results.models[name] for name in (*parents, merged) if Path(results.models.get(name, "")).is_dir()}
    if len(dirs) > 1:
        check_same_tokenizer(dirs)


def comparison_groups(results: EvalResults) -> dict[str, tuple[str, str | None]]:
    """label -> (set, category): overall, each set (if several), each category (if several)."""
    groups: dict[str, tuple[str, str | None]] = {ALL_SETS: (ALL_SETS, None)}
    if len(results.sets) > 1:
        groups.update({f"set:{s}": (s, None) for s in results.sets})
    categories = results.categories()
    if len(categories) > 1:
        groups.update({c: (ALL_SETS, c) for c in categories})
    return groups


def compare_group(results, metric, merged, parents, set_name, category, label, n_boot, seed) -> GroupComparison:
    vectors = {}
    for name in (parents[0], parents[1], merged):
        scores = results.scores(name, metric, set_name, category)
        vectors[name] = [scores[key] for key in sorted(scores)]
    intervals = paired_bootstrap(vectors[merged], vectors[parents[0]], vectors[parents[1]], n_boot=n_boot, seed=seed)
    accuracy = {name: sum(v) / len(v) for name, v in vectors.items()}
    return GroupComparison(metric, label, len(vectors[merged]), accuracy, intervals["vs_best"], intervals["vs_mean"])


def per_question_rows(results: EvalResults, models: list[str], metrics: list[str]) -> list[dict]:
    """One row per question with every model's score under every metric (for W&B tables)."""
    rows: dict[str, dict] = {}
    first = results.records[models[0]][results.protocols[0]]
    for r in first:
        rows[f"{r['set']}/{r['id']}"] = {"set": r["set"], "id": r["id"], "category": r["category"], "gold": r["gold"]}
    for model in models:
        for metric in metrics:
            for key, value in results.scores(model, metric).items():
                rows[key][f"{model}/{metric}"] = value
        if "generate" in results.protocols:
            for r in results.records[model]["generate"]:
                rows[f"{r['set']}/{r['id']}"][f"{model}/reply"] = r["reply"]
    return list(rows.values())


def rank_sweep(sweep, results: EvalResults, parents, metric: str, n_boot: int, seed: int) -> list[dict]:
    """Schedules ranked by score, each with its interval against the best parent."""
    rows = []
    for name in sweep.results.models:
        scores = sweep.results.scores(name, metric)
        parent_scores = [results.scores(p, metric) for p in parents]
        if any(sorted(ps) != sorted(scores) for ps in parent_scores):
            raise ValueError(f"schedule {name!r} was not scored on the parents' questions")
        keys = sorted(scores)
        vs = paired_bootstrap(
            [scores[k] for k in keys], *[[ps[k] for k in keys] for ps in parent_scores], n_boot=n_boot, seed=seed
        )["vs_best"]
        rows.append(
            {
                "name": name,
                "t_spec": sweep.t_specs.get(name),
                "score": sum(scores.values()) / len(scores),
                "vs_best": vs.to_dict(),
                "seconds": sweep.seconds.get(name),
            }
        )
    return sorted(rows, key=lambda r: -r["score"])


def render_markdown(report: SynergyReport) -> str:
    a, b = report.parents
    m = report.merged
    head = report.overall()
    lines = [
        f"# Synergy report: {m} vs {a} and {b}",
        "",
        f"**Verdict ({report.primary_metric}, overall): {head.verdict}.** "
        f"Merged − best parent {head.vs_best}; merged − parents' mean {head.vs_mean} "
        f"(paired bootstrap over questions, {report.n_boot} resamples, seed {report.seed}, 95% percentile intervals). "
        "Synergy is claimed only when the interval of merged − best parent lies above zero.",
        "",
    ]
    metrics = list(dict.fromkeys(c.metric for c in report.comparisons))
    for metric in metrics:
        lines += [
            f"## {metric}",
            "",
            f"| group | n | {a} | {b} | {m} | merged − best [95% CI] | merged − mean [95% CI] | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in (c for c in report.comparisons if c.metric == metric):
            lines.append(
                f"| {c.group} | {c.n} | {c.accuracy[a]:.3f} | {c.accuracy[b]:.3f} | {c.accuracy[m]:.3f} | "
                f"{c.vs_best} | {c.vs_mean} | {c.verdict} |"
            )
        lines.append("")
    lines += ["![accuracy per group](accuracy_by_category.png)", ""]
    if report.schedule:
        lines += [
            "## Merge schedule",
            "",
            f"t spec: `{json.dumps(report.schedule['t_spec'])}` over "
            f"{report.schedule['num_layers']} layers (t = 0 is the base parent).",
            "",
            "![t schedule](t_schedule.png)",
            "",
        ]
    if report.sweep:
        lines += [
            "## Schedule sweep",
            "",
            f"| rank | schedule | {report.primary_metric} | vs best parent [95% CI] | seconds |",
            "|---|---|---|---|---|",
        ]
        for rank, row in enumerate(report.sweep, start=1):
            vs = Interval(**row["vs_best"])
            seconds = "-" if row["seconds"] is None else f"{row['seconds']:.1f}"
            lines.append(f"| {rank} | {row['name']} | {row['score']:.3f} | {vs} | {seconds} |")
        lines += ["", "![score against schedule](score_vs_schedule.png)", ""]
    return "\n".join(lines)


def log_synergy_to_wandb(report: SynergyReport, run) -> None:
    """Log the report to a W&B run: metrics, the verdict, a per-question table and the plots."""
    import wandb

    metrics = {}
    for c in report.comparisons:
        prefix = f"synergy/{c.metric}/{c.group}"
        metrics.update({f"{prefix}/{name}": value for name, value in c.accuracy.items()})
        for which in ("vs_best", "vs_mean"):
            interval = getattr(c, which)
            metrics.update(
                {
                    f"{prefix}/{which}": interval.estimate,
                    f"{prefix}/{which}_low": interval.low,
                    f"{prefix}/{which}_high": interval.high,
                }
            )
    for row in report.sweep:
        metrics[f"sweep/{row['name']}/{report.primary_metric}"] = row["score"]
    run.log(metrics)
    run.summary["synergy"] = report.synergy
    run.summary["synergy_verdict"] = report.overall().verdict
    columns = sorted(
        {key for row in report.per_question for key in row},
        key=lambda k: (k not in ("set", "id", "category", "gold"), k),
    )
    table = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in report.per_question])
    images = {f"synergy/{Path(p).stem}": wandb.Image(p) for name, p in report.files.items() if name.endswith(".png")}
    run.log({"synergy/per_question": table, **images})
