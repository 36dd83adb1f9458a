"""Evaluation results: per-question records for every model, their summaries, and the table.

Kept as plain per-question records (not only accuracies) because the synergy report's
paired bootstrap needs to know which questions each model got right.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hpcadapt.atomic import write_atomic

METRICS = {  # metric name -> (protocol, record key)
    "loglik_acc": ("loglik", "acc"),
    "loglik_acc_norm": ("loglik", "acc_norm"),
    "generate_acc": ("generate", "acc"),
}
ALL_SETS = "all"
SHORT_NAMES = {"loglik_acc": "acc", "loglik_acc_norm": "acc_norm", "generate_acc": "gen acc"}


@dataclass
class EvalResults:
    """What evaluate_models returns and writes: records[model][protocol] = per-question dicts."""

    models: dict[str, str]
    sets: list[str]
    protocols: tuple[str, ...]
    records: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    perplexity: dict[str, float | None] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def add_model(self, name: str, source: EvalResults, source_name: str | None = None) -> None:
        """Copy one model's records from other results on the same questions (e.g. a sweep's schedule)."""
        source_name = source_name or name
        if source.protocols != self.protocols or source.sets != self.sets:
            raise ValueError(f"cannot add {source_name!r}: scored with other protocols or sets")
        self.models[name] = source.models[source_name]
        self.records[name] = source.records[source_name]
        self.perplexity[name] = source.perplexity.get(source_name)

    def metrics(self) -> list[str]:
        """Metric names available for these protocols, e.g. "generate_acc"."""
        return [name for name, (protocol, _) in METRICS.items() if protocol in self.protocols]

    def scores(
        self, model: str, metric: str, set_name: str = ALL_SETS, category: str | None = None
    ) -> dict[str, float]:
        """Per-question 0/1 scores keyed by "set/id", filtered by set and category."""
        protocol, key = METRICS[metric]
        return {
            f"{r['set']}/{r['id']}": r[key]
            for r in self.records[model][protocol]
            if (set_name == ALL_SETS or r["set"] == set_name) and (category is None or r["category"] == category)
        }

    def accuracy(self, model: str, metric: str, set_name: str = ALL_SETS, category: str | None = None) -> float | None:
        values = list(self.scores(model, metric, set_name, category).values())
        return sum(values) / len(values) if values else None

    def unparseable(self, model: str, set_name: str = ALL_SETS) -> int | None:
        if "generate" not in self.protocols:
            return None
        return sum(1 for r in self.records[model]["generate"] if r["unparseable"] and set_name in (ALL_SETS, r["set"]))

    def categories(self) -> list[str]:
        first = next(iter(self.records.values()))
        return sorted({r["category"] for records in first.values() for r in records})

    def set_columns(self) -> list[str]:
        """The sets shown in tables: each set, then "all" when there is more than one."""
        return self.sets + [ALL_SETS] if len(self.sets) > 1 else list(self.sets)

    def summary(self) -> dict:
        """{model: {"perplexity": x, set: {metric: acc, "unparseable": n, "n": count}}}."""
        out: dict = {}
        for model in self.models:
            row: dict = {"perplexity": self.perplexity.get(model)}
            for set_name in self.set_columns():
                cell = {metric: self.accuracy(model, metric, set_name) for metric in self.metrics()}
                cell["unparseable"] = self.unparseable(model, set_name)
                cell["n"] = len(self.scores(model, self.metrics()[0], set_name))
                row[set_name] = cell
            out[model] = row
        return out

    def category_summary(self) -> dict:
        """{model: {category: {metric: acc, "n": count}}} over all sets."""
        return {
            model: {
                category: {
                    **{m: self.accuracy(model, m, ALL_SETS, category) for m in self.metrics()},
                    "n": len(self.scores(model, self.metrics()[0], ALL_SETS, category)),
                }
                for category in self.categories()
            }
            for model in self.models
        }

    def category_table_text(self) -> str:
        """Accuracy per category (all sets together), one row per category and model."""
        header = ["category", "model", *(SHORT_NAMES[m] for m in self.metrics()), "n"]
        summary = self.category_summary()
        rows = [
            [
                category,
                model,
                *(_fmt(summary[model][category][m]) for m in self.metrics()),
                summary[model][category]["n"],
            ]
            for category in self.categories()
            for model in self.models
        ]
        return _markdown_table(header, rows)

    def table_text(self) -> str:
        """One markdown table: rows are models; perplexity, then acc columns per set."""
        header = ["model", "ppl"]
        for set_name in self.set_columns():
            header += [f"{set_name} {SHORT_NAMES[m]}" for m in self.metrics()]
            if "generate" in self.protocols:
                header.append(f"{set_name} unparsed")
        rows = []
        summary = self.summary()
        for model, row in summary.items():
            ppl = row["perplexity"]
            cells = [model, "-" if ppl is None else f"{ppl:.2f}"]
            for set_name in self.set_columns():
                cell = row[set_name]
                cells += [_fmt(cell[m]) for m in self.metrics()]
                if "generate" in self.protocols:
                    cells.append(f"{cell['unparseable']}/{cell['n']}")
            rows.append(cells)
        table = _markdown_table(header, rows)
        plain = [m for m, f in self.meta.get("prompt_format", {}).items() if f.startswith("plain")]
        if plain:
            table += f"\nAsked in plain text, having no chat template: {', '.join(sorted(plain))}.\n"
        return table

    def to_dict(self) -> dict:
        return {
            "models": self.models,
            "sets": self.sets,
            "protocols": list(self.protocols),
            "perplexity": self.perplexity,
            "summary": self.summary(),
            "categories": self.category_summary(),
            "meta": self.meta,
            "records": self.records,
        }

    @classmethod
    def from_dict(cls, data: dict) -> EvalResults:
        return cls(
            models=data["models"],
            sets=data["sets"],
            protocols=tuple(data["protocols"]),
            records=data["records"],
            perplexity=data.get("perplexity", {}),
            meta=data.get("meta", {}),
        )

    def save(self, out_dir: str | Path) -> Path:
        """Write results.json and table.md, each replaced atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "results.json", json.dumps(self.to_dict(), indent=1))
        write_atomic(out / "table.md", self.table_text() + "\n\nPer category:\n\n" + self.category_table_text() + "\n")
        return out / "results.json"

    @classmethod
    def load(cls, path: str | Path) -> EvalResults:
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _markdown_table(header: list[str], rows: list[list]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
