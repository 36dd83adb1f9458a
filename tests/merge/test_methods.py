"""Each method's math against a direct float64 reference computation."""

import math

import numpy as np
import pytest
import torch

from hpcadapt_merge.methods.dare import dare, random_drop
from hpcadapt_merge.methods.linear import linear
from hpcadapt_merge.methods.slerp import slerp, slerp_with_stats
from hpcadapt_merge.methods.task_arithmetic import task_arithmetic
from hpcadapt_merge.methods.ties import magnitude_trim, ties


def reference_slerp(a: np.ndarray, b: np.ndarray, t: float):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = float(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))
    if abs(cos) > 0.9995:
        return (1 - t) * a + t * b, cos
    theta = math.acos(cos)
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta), cos


def pair(n=50_000, noise=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g)
    return a.bfloat16(), (a + noise * torch.randn(n, generator=g)).bfloat16()


@pytest.mark.parametrize("t", [0.1, 0.5, 0.83])
def test_slerp_matches_reference_within_one_bf16_ulp(t):
    a, b = pair()
    out, cos, branch = slerp_with_stats(a, b, t)
    ref, ref_cos = reference_slerp(a.float().numpy(), b.float().numpy(), t)
    assert branch == "slerp" and cos == pytest.approx(ref_cos, abs=2e-5)  # float32 sums, as mergekit rounds them
    assert out.dtype == torch.bfloat16
    ulps = (out.view(torch.int16).int() - torch.from_numpy(ref).bfloat16().view(torch.int16).int()).abs()
    assert float((ulps == 0).float().mean()) > 0.999
    # more than 1 ulp only where the two terms cancel and float32 rounding of the terms dominates the small result
    scale = (a.double().abs() + b.double().abs()).numpy()
    assert (np.abs(ref)[(ulps > 1).numpy()] < 0.05 * scale[(ulps > 1).numpy()]).all()


def test_slerp_takes_the_linear_branch_for_nearly_colinear_tensors():
    a, b = pair(noise=0.01)
    out, cos, branch = slerp_with_stats(a, b, 0.3)
    assert cos > 0.9995 and branch == "lerp"
    expected = (0.7 * a.float() + 0.3 * b.float()).bfloat16()
    assert torch.equal(out, expected)


def test_slerp_endpoints_are_exact_copies_and_zero_tensors_do_not_blow_up():
    a, b = pair()
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    zero = torch.zeros(1000, dtype=torch.bfloat16)
    out, cos, _ = slerp_with_stats(zero, pair(1000)[0], 0.5)
    assert torch.isfinite(out.float()).all() and cos == 0.0


def test_slerp_cosine_stays_accurate_on_a_large_tensor():
    """Chunked float32 reductions (vectorised, cascaded sums): no drift of a single float32 running sum."""
    g = torch.Generator().manual_seed(1)
    a = (torch.rand(6_000_000, generator=g) + 1.0)
    b = a + 0.05 * torch.rand(6_000_000, generator=g)
    _, cos, _ = slerp_with_stats(a, b, 0.5)
    a64, b64 = a.double(), b.double()
    exact = float(a64 @ b64 / (a64.norm() * b64.norm()))
    assert abs(cos - exact) < 2e-6


def test_linear_and_task_arithmetic_match_the_formulas():
    xs = [torch.randn(100, dtype=torch.float64) for _ in range(3)]
    w = [0.2, 0.5, 0.3]
    assert torch.allclose(linear(xs, w, normalize=True), sum(x * wi for x, wi in zip(xs, w)) / sum(w))
    assert torch.allclose(linear(xs, [1, 1, 1], normalize=False), xs[0] + xs[1] + xs[2])
    base = torch.randn(100, dtype=torch.float64)
    expected = base + 0.7 * (0.2 * (xs[0] - base) + 0.5 * (xs[1] - base))
    assert torch.allclose(task_arithmetic(base, xs[:2], w[:2], lam=0.7), expected)


def test_ties_trims_elects_and_averages_disjointly():
    base = torch.zeros(6, dtype=torch.float64)
    a = torch.tensor([3.0, -1.0, 0.1, 2.0, 0.0, -4.0], dtype=torch.float64)
    b = torch.tensor([0.4, 2.0, -0.2, -3.0, 1.5, -1.0], dtype=torch.float64)
    assert torch.equal(magnitude_trim(a, 0.5), torch.tensor([3.0, 0, 0, 2.0, 0, -4.0], dtype=torch.float64))
    out = ties(base, [a, b], [1.0, 1.0], [0.5, 0.5], normalize=True)
    # trimmed: a -> [3,0,0,2,0,-4], b -> [0,2,0,-3,1.5,0]; elected signs: + + 0 - + -
    assert torch.allclose(out, torch.tensor([3.0, 2.0, 0.0, -3.0, 1.5, -4.0], dtype=torch.float64))


def test_dare_is_seeded_and_rescales_survivors():
    delta = torch.ones(100_000, dtype=torch.float64)
    kept = random_drop(delta, 0.25, seed=7)
    assert set(kept.unique().tolist()) == {0.0, 4.0}
    assert abs(float((kept != 0).double().mean()) - 0.25) < 0.01
    base, x = torch.zeros(1000, dtype=torch.float64), torch.randn(1000, dtype=torch.float64)
    run = lambda seed: dare(base, [x], [1.0], [0.5], seed=seed, tensor_name="w", sign_election=False, normalize=False)
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))
