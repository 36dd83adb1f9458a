"""The synergy report's pictures (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from pathlib import Path

from hpcadapt.atomic import replacing


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    try:
        with replacing(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def plot_accuracy_by_group(accuracy: dict[str, dict[str, float]], title: str, path: Path) -> Path:
    """Grouped bars: accuracy[model][group] for each group (categories, then overall)."""
    plt = _pyplot()
    models = list(accuracy)
    groups = list(next(iter(accuracy.values())))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(groups) + 2), 4))
    for k, model in enumerate(models):
        xs = [g + (k - (len(models) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [accuracy[model][group] or 0.0 for group in groups], width, label=model)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylim(0, 1.18)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=len(models), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(scores: dict[str, float], reference: dict[str, float], metric: str, path: Path) -> Path:
    """Score per schedule (best first) with the parents' scores as horizontal lines."""
    plt = _pyplot()
    names = sorted(scores, key=lambda n: -scores[n])
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4))
    ax.bar(range(len(names)), [scores[n] for n in names], color="tab:green")
    for (label, value), style in zip(reference.items(), ("--", ":", "-.")):
        ax.axhline(value, linestyle=style, color="gray", label=f"{label} {value:.3f}")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(metric)
    ax.set_title("score against SLERP schedule")
    ax.grid(axis="y", alpha=0.3)
    if reference:
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)
