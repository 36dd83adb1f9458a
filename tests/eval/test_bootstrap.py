"""Paired bootstrap: seeded reproducibility and coverage of a known difference."""

from __future__ import annotations

import numpy as np
import pytest

from hpcadapt.eval.bootstrap import paired_bootstrap


def synthetic(n, p_merged, p_a, p_b, seed):
    rng = np.random.default_rng(seed)
    return [(rng.random(n) < p).astype(float) for p in (p_merged, p_a, p_b)]


def test_same_seed_same_interval_other_seed_differs():
    merged, a, b = synthetic(300, 0.7, 0.6, 0.5, seed=1)
    first = paired_bootstrap(merged, a, b, n_boot=500, seed=7)
    assert first == paired_bootstrap(merged, a, b, n_boot=500, seed=7)
    assert first != paired_bootstrap(merged, a, b, n_boot=500, seed=8)
    # block size only changes how resamples are drawn in memory, never which ones
    assert first == paired_bootstrap(merged, a, b, n_boot=500, seed=7, block=64)


def test_intervals_cover_the_true_difference_about_95_percent_of_the_time():
    true_vs_best, true_vs_mean = 0.72 - 0.62, 0.72 - (0.62 + 0.5) / 2
    covered_best = covered_mean = 0
    trials = 60
    for trial in range(trials):
        merged, a, b = synthetic(400, 0.72, 0.62, 0.5, seed=100 + trial)
        result = paired_bootstrap(merged, a, b, n_boot=400, seed=trial)
        covered_best += result["vs_best"].low <= true_vs_best <= result["vs_best"].high
        covered_mean += result["vs_mean"].low <= true_vs_mean <= result["vs_mean"].high
        assert result["vs_best"].low < result["vs_best"].estimate < result["vs_best"].high
    assert covered_best / trials >= 0.85
    assert covered_mean / trials >= 0.85


def test_clear_synergy_excludes_zero_and_identical_models_do_not():
    merged, a, b = synthetic(500, 0.9, 0.6, 0.55, seed=3)
    assert paired_bootstrap(merged, a, b, n_boot=300)["vs_best"].low > 0
    same = paired_bootstrap(a, a, b, n_boot=300)["vs_best"]
    assert not same.excludes_zero and same.estimate == 0.0


def test_bad_vectors_are_rejected():
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap([1, 0], [1, 0, 1], [0, 0])
    with pytest.raises(ValueError, match="zero questions"):
        paired_bootstrap([], [], [])
