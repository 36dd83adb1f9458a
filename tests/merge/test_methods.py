"""SLERP against a direct float64 reference; the pieces of task arithmetic, TIES and DARE
(methods/gta.py) against torch's own operations."""

import math

import numpy as np
import pytest
import torch
from hpcadapt_merge.methods import gta
from hpcadapt_merge.methods.slerp import slerp, slerp_with_stats


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


def test_linear_is_a_fused_multiply_add_in_float32():
    """mergekit's addcmul_: each weighted input is added with one rounding (an FMA), which matters
    where the terms cancel."""
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(100_003, generator=g).bfloat16() for _ in range(3)]
    weights = [0.3, 0.7, -0.45]
    out = gta.linear_combine(xs, weights, normalize=True, precise=False)
    w = [float(torch.tensor(v, dtype=torch.float32)) for v in weights]
    acc = torch.zeros(100_003, dtype=torch.float64)
    for x, v in zip(xs, w):  # a float64 product is exact here; one rounding to float32 per step
        acc = (acc + x.double() * v).float().double()
    expected = (acc.float() / torch.tensor(w).sum())
    assert torch.equal(out, expected)


def test_ties_sign_election_and_disjoint_mean():
    base = torch.zeros(6)
    deltas = [torch.tensor([3.0, 0.0, 0.0, 2.0, 0.0, -4.0]), torch.tensor([0.0, 2.0, 0.0, -3.0, 1.5, 0.0])]
    out = gta.combine(base, deltas, torch.tensor([1.0, 1.0]), consensus=True, normalize=True, lam=1.0)
    # elected signs: + + (0 -> +) - + -; entries of the other sign are left out of sum and divisor
    assert torch.equal(out, torch.tensor([3.0, 2.0, 0.0, -3.0, 1.5, -4.0]))
    plain = gta.combine(base, deltas, torch.tensor([0.5, 0.5]), consensus=False, normalize=False, lam=2.0)
    assert torch.equal(plain, torch.tensor([3.0, 2.0, 0.0, -1.0, 1.5, -4.0]))


def test_bfloat16_weights_are_rounded_as_mergekit_holds_them():
    assert float(gta.weights_tensor([0.6], torch.bfloat16)[0]) == 0.6015625


def test_magnitude_keys_order_magnitudes_and_nan_first():
    values = torch.tensor([0.5, -2.0, 0.0, -0.0, float("inf"), float("nan"), 1e-40, -3.0])
    keys = gta.magnitude_keys(values)
    order = torch.argsort(keys, descending=True, stable=True).tolist()
    assert order == [5, 4, 7, 1, 0, 6, 2, 3]
    assert int(keys[2]) == int(keys[3]) == 0


def test_cut_from_histogram_finds_the_kth_largest_bucket():
    counts = [5, 0, 3, 2]  # ascending keys: 2 entries in bucket 3, 3 in bucket 2, ...
    assert gta.cut_from_histogram(counts, 1) == (3, 0, 1)
    assert gta.cut_from_histogram(counts, 4) == (2, 2, 2)
    assert gta.cut_from_histogram(counts, 6) == (0, 5, 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dare_draws_are_torch_bernoulli(dtype):
    """One 32-bit Mersenne Twister output per element, kept when its low 24 bits / 2^24 < p."""
    n, density, seed = 50_000, 0.3, 1234
    generator = torch.Generator().manual_seed(seed)
    theirs = torch.bernoulli(torch.full((n,), density, dtype=dtype), generator=generator).bool()
    legacy = np.random.RandomState(seed).get_state()
    bits = np.random.MT19937()
    bits.state = {"bit_generator": "MT19937", "state": {"key": legacy[1], "pos": legacy[2]}}
    draws = np.random.Generator(bits).integers(0, 1 << 32, size=n, dtype=np.uint32) & 0xFFFFFF
    ours = torch.from_numpy(draws < gta.keep_threshold(density, dtype))
    assert torch.equal(ours, theirs)
    assert abs(float(ours.float().mean()) - float(torch.tensor(density, dtype=dtype))) < 0.01
