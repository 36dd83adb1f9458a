"""A picture of the t schedule over depth: the thing users check before a long merge."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .schedule import filters_of, resolve_value


def schedule_curves(t_spec: Any, num_layers: int) -> dict[str, list[float]]:
    """t per layer for each filter group ("default" for the entry without filter)."""
    curves = {}
    for pattern in filters_of(t_spec):
        label = pattern or "default"
        # A name that matches this filter and no earlier one would be ideal; the
        # filter string itself, inside a layer name, matches exactly its entry or an
        # earlier, broader one — which is what such a tensor would really get.
        probe = f"model.layers.{{i}}.{pattern}.weight" if pattern else "model.layers.{i}.__default__.weight"
        curves[label] = [float(resolve_value(probe.format(i=i), t_spec, i / max(num_layers - 1, 1)))
                         for i in range(num_layers)]
    return curves


def plot_schedule(t_spec: Any, num_layers: int, png_path, title: str = "merge schedule over depth") -> Path:
    """Draw t over layer index, one line per filter group, into `png_path` (the toolkit's
    synergy report draws its merge's schedule with it too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = schedule_curves(t_spec, num_layers)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, values in curves.items():
        ax.plot(range(num_layers), values, marker="o", markersize=3, label=label)
    ax.set_xlabel(f"layer (of {num_layers})")
    ax.set_ylabel("t  (0 = base model, 1 = other)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")  # an interrupted draw never leaves a torn picture
    try:
        fig.savefig(partial, dpi=110, format="png")
        os.replace(partial, path)
    finally:
        plt.close(fig)
        partial.unlink(missing_ok=True)
    return path
