"""Paired bootstrap confidence intervals for "does the merge beat its parents?".

Paired, because all three models answer the same questions: resampling questions
(not models) keeps each question's difficulty shared, which gives much tighter and
honest intervals than comparing two independent accuracies.

"Merged minus best parent" recomputes which parent is best inside every resample.
Taking the max of two noisy means biases it upward, so the difference is biased
slightly downward: a conservative choice for a synergy claim.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_bootstrap(
    merged, parent_a, parent_b, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95, block: int = 256
) -> dict[str, Interval]:
    """Intervals for merged − max(parents) ("vs_best") and merged − mean(parents) ("vs_mean").

    Inputs are per-question scores (0/1 or any real score) in the same question order.
    Resamples are drawn in blocks so memory stays at block × n whatever n_boot is.
    """
    m, a, b = (np.asarray(x, dtype=np.float64) for x in (merged, parent_a, parent_b))
    if not (m.shape == a.shape == b.shape) or m.ndim != 1:
        raise ValueError(f"score vectors must be 1-D and of one length, got {m.shape}, {a.shape}, {b.shape}")
    n = m.size
    if n == 0:
        raise ValueError("cannot bootstrap zero questions")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    rng = np.random.default_rng(seed)
    vs_best = np.empty(n_boot)
    vs_mean = np.empty(n_boot)
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(size, n))
        m_means, a_means, b_means = m[idx].mean(axis=1), a[idx].mean(axis=1), b[idx].mean(axis=1)
        vs_best[start : start + size] = m_means - np.maximum(a_means, b_means)
        vs_mean[start : start + size] = m_means - (a_means + b_means) / 2
    return {
        "vs_best": percentile_interval(m.mean() - max(a.mean(), b.mean()), vs_best, level),
        "vs_mean": percentile_interval(m.mean() - (a.mean() + b.mean()) / 2, vs_mean, level),
    }


def percentile_interval(estimate: float, samples: np.ndarray, level: float = 0.95) -> Interval:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), level)


def mean_interval(scores, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """A mean (an accuracy, for 0/1 scores) with its percentile bootstrap interval over questions."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("cannot bootstrap zero questions")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, scores.size, size=(n_boot, scores.size))
    return percentile_interval(float(scores.mean()), scores[idx].mean(axis=1), level)

