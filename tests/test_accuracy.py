"""Accuracy against 60-digit mpmath, regime by regime, on every backend.

Tolerances (relative error of the loss and of every gradient component):
1e-12 in float64, 2e-5 in float32 -- see gammace_ref.testing.regimes for the
metric.  The battery runs γ ∈ {0, 1e-7, 0.1, 0.5, 0.8, 1-1e-9, 1} for γ-CE and
TaiLr (b = 0.2); the hand-written tests below pin the regimes one at a time.
"""

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gammace_ref as G
from gammace_ref.testing import metrics, reference, regimes

TOL = regimes.TOLERANCE
NAMES = [r.name for r in regimes.regimes("float64", 10)]


@pytest.mark.parametrize("name", NAMES)
def test_regime_battery(backend, dtype, name):
    if name == "huge_vocab" and backend.lazy:
        pytest.skip("huge_vocab under jax.jit: same XLA kernels as eager jax, which runs it")
    # γ is an argument of the compiled function, so under jax.jit it is traced (one compile
    # per shape) -- the path a γ schedule inside a jitted step takes.
    res = regimes.measure(backend, dtype, only={name})
    for (regime, loss), (err_v, err_g) in res.items():
        assert err_v <= TOL[dtype], f"{regime}/{loss} value rel err {err_v:.2e}"
        assert err_g <= TOL[dtype], f"{regime}/{loss} grad rel err {err_g:.2e}"


def _check(backend, dtype, row, y, gamma, *, threshold=None, eps=0.0):
    z, t = np.asarray([row], dtype=dtype), np.asarray([y])
    exact = [float(v) for v in np.asarray(row, dtype=dtype)]
    fn, extra = (G.gamma_ce_value_and_grad, ()) if threshold is None else (G.tailr_value_and_grad, (threshold,))
    loss, grad = backend.run(fn, z, t, gamma, *extra, reduction="none", label_smoothing=eps)
    ref_l, ref_g = reference.row(exact, y, gamma, threshold, eps)
    return metrics.rel_err(loss, [ref_l], dtype), metrics.rel_err(grad, [ref_g], dtype), loss[0], ref_l


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 1.0 - 1e-9, 1.0])
def test_p_near_one_keeps_one_minus_p(backend, dtype, gamma):
    # 1 - p = 2e^-60 ≈ 1.75e-26: a naive 1 - exp(log p) is exactly 0 here.
    err_v, err_g, loss, ref = _check(backend, dtype, [60.0, 0.0, 0.0], 0, gamma)
    assert err_v <= TOL[dtype] and err_g <= TOL[dtype]
    assert loss > 0 and math.isclose(loss, 2 * math.exp(-60), rel_tol=1e-5)
    naive = -np.log(gamma + (1 - gamma) * np.exp(-np.log1p(2 * np.exp(-60.0)))) / (1 - gamma) if gamma < 1 else 0.0
    assert naive == 0.0  # what a straightforward implementation returns


@pytest.mark.parametrize("gamma", [0.0, 1e-7, 0.8])
def test_p_near_zero_log_p_minus_800(backend, gamma):
    err_v, err_g, loss, ref = _check(backend, "float64", [0.0, 800.0, 3.0], 0, gamma)
    assert err_v <= TOL["float64"] and err_g <= TOL["float64"]
    expected = 800.0 if gamma == 0 else -math.log(gamma) / (1 - gamma)
    assert math.isclose(loss, expected, rel_tol=1e-13)


@pytest.mark.parametrize("gamma", [1e-7, 0.5, 1.0])
def test_gamma_one_is_one_minus_p(backend, gamma):
    row = [0.3, -1.2, 2.0]
    err_v, err_g, loss, ref = _check(backend, "float64", row, 1, gamma)
    assert err_v <= TOL["float64"] and err_g <= TOL["float64"]
    if gamma == 1.0:
        p = math.exp(-1.2) / sum(math.exp(v) for v in row)
        assert math.isclose(loss, 1 - p, rel_tol=1e-15)


def test_gamma_just_below_one_is_continuous(backend):
    z, t = np.asarray([[0.3, -1.2, 2.0]]), np.asarray([1])
    at_one = backend.run(G.gamma_ce, z, t, 1.0)
    below = backend.run(G.gamma_ce, z, t, 1.0 - 1e-12)
    assert abs(below - at_one) / at_one < 1e-11


def test_masked_target_gives_inf_for_ce_and_finite_otherwise(backend):
    row = [-math.inf, 0.0, 1.0]
    z, t = np.asarray([row]), np.asarray([0])
    ce, g_ce = backend.run(G.gamma_ce_value_and_grad, z, t, 0.0, reduction="none")
    assert ce[0] == math.inf
    soft = np.exp(np.asarray(row) - np.logaddexp(0.0, 1.0))
    np.testing.assert_allclose(g_ce[0], soft - [1, 0, 0], rtol=1e-15)
    l5, g5 = backend.run(G.gamma_ce_value_and_grad, z, t, 0.5, reduction="none")
    assert l5[0] == pytest.approx(math.log(2) / 0.5, rel=1e-15)
    assert np.all(g5 == 0.0)  # w = p/(γ + (1-γ)p) = 0


def test_label_smoothing_against_mpmath(backend):
    # With ε > 0 a gradient component is a difference of two terms,
    # (1-ε)k·(p_j - δ_jy) and ε(p_j - 1/C); it is measured relative to the
    # larger term (the condition of that difference), at 1e-13.
    rows = [[0.3, -1.2, 2.0, 0.7], [30.0, 0.0, -2.0, 1.0], [-5.0, 4.0, 1.0, -math.inf]]
    for row in rows:
        for fn in ("gamma_ce", "tailr"):
            b = 0.3 if fn == "tailr" else None
            err_v, _, _, _ = _check(backend, "float64", row, 0, 0.1, threshold=b, eps=0.1)
            assert err_v <= 1e-13 if math.isfinite(row[-1]) else err_v == 0.0
            z, t = np.asarray([row]), np.asarray([0])
            grad_fn, extra = (G.tailr_grad, (0.3,)) if b else (G.gamma_ce_grad, ())
            got = backend.run(grad_fn, z, t, 0.1, *extra, label_smoothing=0.1)[0]
            _, ref_g = reference.row(row, 0, 0.1, b, 0.1)
            zs, p, q, _, _ = reference._softmax(tuple(row), 0, reference.DPS)
            scale = [abs(r) + 0.1 * (p_j + 0.25) for r, p_j in zip(ref_g, p)]
            for gj, rj, sj in zip(got, ref_g, scale):
                assert abs(mpmath.mpf(gj) - rj) <= 1e-13 * sj


finite = st.floats(-60.0, 60.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(row=st.lists(finite, min_size=1, max_size=6), data=st.data(),
       gamma=st.sampled_from(regimes.GAMMAS) | st.floats(0.0, 1.0))
def test_random_rows_float64_numpy(row, data, gamma):
    y = data.draw(st.integers(0, len(row) - 1))
    for fn, b in ((G.gamma_ce_value_and_grad, None), (G.tailr_value_and_grad, 0.25)):
        args = (gamma,) if b is None else (gamma, b)
        loss, grad = fn(np.asarray([row]), np.asarray([y]), *args, reduction="none")
        ref_l, ref_g = reference.row(row, y, gamma, b)
        assert metrics.rel_err(loss, [ref_l], "float64") <= 1e-12
        assert metrics.rel_err(grad, [ref_g], "float64") <= 1e-12
