"""Issue 16's hardening round, on the core (every backend): one test (or a few) per item.

Items 1, 4 and 10 (the torch adapter's compiled kernel) are in
tests/test_torch_hardening.py; item 13 (ulps on every NumPy CPU path) in
tests/test_ulps.py; the fuzz of the core against mpmath in tests/test_fuzz.py.
Every expected value is mpmath's (gammace_ref.testing.reference) or a limit
derived and checked with mpmath here.
"""

import math

import mpmath
import numpy as np
import pytest

import gammace_ref as G
from gammace_ref.testing import metrics, reference, regimes

TOL = regimes.TOLERANCE


def _vg(backend, fn, z, y, *args, **kw):
    """``fn(z, y, *args, **kw)`` on ``backend`` (under jax.jit for jax.jit), as NumPy arrays.

    NumPy warns when a logit difference overflows to -inf (at ±3.4e38 in
    float32: probability 0, the intended value): those warnings are let pass.
    """
    with np.errstate(over="ignore"):
        loss, grad = backend.call(lambda z, y: fn(z, y, *args, **kw), backend.asarray(z), backend.asarray(y))
        return backend.numpy(loss), backend.numpy(grad)


# --------------------------------------------------------------------------- item 2: ignored rows


GARBAGE = [[1.0, np.nan, 3.0], [1.0, np.inf, 3.0], [-np.inf] * 3, [np.nan, np.inf, -np.inf], [1e300, -1e300, np.inf],
           [1e308, -1e308, 0.0]]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_an_ignored_row_gets_an_exact_zero_gradient_whatever_it_holds(backend, reduction, smoothing):
    counted = [[0.5, -1.0, 2.0], [0.0, 0.0, 1.0]]
    z = np.array(GARBAGE + counted)
    y = np.array([-100] * len(GARBAGE) + [2, 0])
    kw = dict(reduction=reduction, ignore_index=-100, label_smoothing=smoothing)
    with np.errstate(all="ignore"):
        loss, grad = _vg(backend, G.gamma_ce_value_and_grad, z, y, 0.1, **kw)
    ref_l, ref_g = reference.batch(counted, [2, 0], 0.1, None, smoothing, reduction)
    ignored = len(GARBAGE)
    assert np.all(grad[:ignored] == 0.0)  # not NaN: exactly zero
    assert metrics.rel_err(grad[ignored:], ref_g, "float64") <= TOL["float64"]
    expected = [0.0] * ignored + ref_l if reduction == "none" else ref_l
    assert metrics.rel_err(loss, expected, "float64") <= TOL["float64"]


def test_the_issue_reproduction_of_item_2(backend):
    z = np.array([[1.0, np.nan, 3.0], [0.5, -1.0, 2.0]])
    with np.errstate(all="ignore"):
        _, grad = _vg(backend, G.gamma_ce_value_and_grad, z, np.array([-100, 2]), 0.1, ignore_index=-100)
    assert np.array_equal(grad[0], [0.0, 0.0, 0.0])


def test_where_false_rows_are_ignored_rows_too():
    z = np.array([[1.0, np.nan], [0.0, 1.0]])  # NaN off the target: it would reach the gradient
    with np.errstate(all="ignore"):
        _, grad = G.gamma_ce_value_and_grad(z, np.array([0, 1]), 0.3, where=np.array([False, True]))
    assert np.all(grad[0] == 0.0) and np.all(np.isfinite(grad[1]))


# --------------------------------------------------------------------------- item 5: label smoothing range


@pytest.mark.parametrize("dtype,big", [("float32", 1e38), ("float32", 3.4e38), ("float64", 1.7e308)])
@pytest.mark.parametrize("eps", [0.1, 0.9])
def test_label_smoothing_does_not_overflow_before_its_scaling(backend, dtype, big, eps):
    z = np.array([[big, -big, -big], [-big, big, 0.0]], dtype=dtype)
    y = np.array([0, 2])
    loss, grad = _vg(backend, G.gamma_ce_value_and_grad, z, y, 0.1, reduction="none", label_smoothing=eps)
    ref_l, ref_g = reference.batch(z.astype(np.float64).tolist(), y.tolist(), 0.1, None, eps)
    # the true values are finite (1.3e37 for the issue's float32 row at ε = 0.1) but Σ(m - z) is not
    finite = np.array([float(v) < float(np.finfo(dtype).max) for v in ref_l])
    assert finite[0] or eps == 0.9  # at ε = 0.9 and the largest logits the true value overflows too
    assert np.array_equal(np.isfinite(loss), finite)  # inf exactly where the true value exceeds the dtype's max
    assert metrics.rel_err(loss[finite], np.array(ref_l)[finite], dtype) <= TOL[dtype]
    assert metrics.rel_err(grad, ref_g, dtype) <= TOL[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("eps", [5e-324, 1e-320, 1e-300, 1e-45, 1e-40])
def test_a_tiny_label_smoothing_is_exact_even_where_eps_over_c_underflows(backend, dtype, eps):
    big = 1e38 if dtype == "float32" else 1e308
    z = np.array([[0.0, -np.inf, 1.0], [big, -big, -big], [2.0, 1.0, 0.0]], dtype=dtype)
    y = np.array([0, 0, 0])
    loss, grad = _vg(backend, G.gamma_ce_value_and_grad, z, y, 0.1, reduction="none", label_smoothing=eps)
    ref_l, ref_g = reference.batch(z.astype(np.float64).tolist(), y.tolist(), 0.1, None, eps)
    # A -inf logit has p = 0: any ε > 0 makes the smoothing term ε/C·(-log 0) = +inf, the exact value.
    assert loss[0] == np.inf and mpmath.isinf(ref_l[0])
    assert metrics.rel_err(loss, ref_l, dtype) <= TOL[dtype]
    assert metrics.rel_err(grad, ref_g, dtype) <= TOL[dtype]


# --------------------------------------------------------------------------- item 6: TaiLr, masked target, b = 0


def test_tailr_masked_target_limit_with_mpmath():
    # W·(-log p) with W = p/(γ + (1-γ)p) (b = 0): p·(-log p)/(γ + (1-γ)p) -> 0 as p -> 0 for γ > 0
    # (p·log p -> 0); at γ = 1 (DFT) it is p·(-log p) -> 0 too.  mpmath on ever more negative target
    # logits shows the values fall to 0, the limit the -inf target must give.
    for gamma in (0.3, 1.0):
        vals = [reference.row([t, 0.0, 1.0], 0, gamma, 0.0)[0] for t in (-10.0, -100.0, -1e4, -1e6)]
        assert all(a > b for a, b in zip(vals, vals[1:])) and vals[-1] < mpmath.mpf("1e-400000")


@pytest.mark.parametrize("gamma", [0.3, 1.0, 5e-324])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tailr_with_a_masked_target_and_b_0_is_0_not_nan(backend, dtype, gamma):
    z = np.array([[-np.inf, 0.0, 1.0], [0.0, 1.0, 2.0]], dtype=dtype)
    y = np.array([0, 1])
    loss, grad = _vg(backend, G.tailr_value_and_grad, z, y, gamma, 0.0, reduction="none")
    assert loss[0] == 0.0 and np.all(grad[0] == 0.0)
    mean, _ = _vg(backend, G.tailr_value_and_grad, z, y, gamma, 0.0)  # one such row: the mean stays finite
    ref, _ = reference.batch(z[1:].astype(np.float64).tolist(), [1], gamma, 0.0)
    assert math.isclose(float(mean), float(ref[0]) / 2, rel_tol=TOL[dtype])


@pytest.mark.parametrize("gamma,threshold", [(0.0, 0.0), (0.3, 0.2), (1.0, 0.5)])
def test_tailr_with_a_masked_target_is_inf_where_the_weight_is_not_0(backend, gamma, threshold):
    # W = 1 (γ = 0) or W ≥ b > 0: W·(-log 0) = +inf, exactly.
    loss, _ = _vg(backend, G.tailr_value_and_grad, np.array([[-np.inf, 0.0]]), np.array([0]), gamma, threshold,
                  reduction="none")
    assert loss[0] == np.inf


# --------------------------------------------------------------------------- item 7: silent conversions


def test_longdouble_logits_raise_instead_of_computing_in_float32():
    z = np.array([[1.0, 2.0]], dtype=np.longdouble)
    if np.finfo(np.longdouble).bits <= 64:
        pytest.skip("longdouble is float64 on this platform")
    with pytest.raises(TypeError, match=r"logits.*longdouble|logits.*float128"):
        G.gamma_ce(z, np.array([0]), 0.1)


def test_a_uint64_target_beyond_int64_is_out_of_range_not_ignored():
    z = np.array([[1.0, 2.0], [0.0, 1.0]])
    y = np.array([2**64 - 1, 0], dtype=np.uint64)
    with pytest.raises(ValueError, match=r"targets: value 18446744073709551615 at index \(0,\)"):
        G.gamma_ce(z, y, 0.1, ignore_index=-1)
    assert np.isfinite(G.gamma_ce(z, np.array([1, 0], dtype=np.uint64), 0.1, ignore_index=-1))


def test_a_uint64_target_beyond_int64_is_nan_under_jit():
    jax = pytest.importorskip("jax")
    from gammace_ref.testing.backends import availability, Backend

    if availability(Backend.JAX_JIT):
        pytest.skip(availability(Backend.JAX_JIT))
    z, y = np.array([[1.0, 2.0], [0.0, 1.0]]), np.array([2**64 - 1, 0], dtype=np.uint64)
    loss = jax.jit(lambda z, y: G.gamma_ce(z, y, 0.1, ignore_index=-1, reduction="none"))(z, y)
    assert np.isnan(loss[0]) and np.isfinite(loss[1])


def test_jax_without_x64_refuses_a_target_it_would_wrap():
    jax = pytest.importorskip("jax")
    from gammace_ref import jax as GJ

    z = np.zeros((2, 3), dtype=np.float32)
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"targets.*4294967297.*int32"):
            GJ.gamma_ce(z, np.array([2**32 + 1, 0]), 0.1)
        assert np.isfinite(GJ.gamma_ce(z, np.array([2, 0]), 0.1))


def test_a_subnormal_array_gamma_under_jax_jit_is_flushed_to_0_as_documented():
    # XLA on CPU flushes subnormal operands to 0 (FTZ/DAZ): under jax.jit a γ of 1e-310 given as an
    # array computes γ = 0.  Given as a Python float it stays static and exact (docs/numerics.md).
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    z, y = np.array([[0.0, -714.0, 0.0]]), np.array([1])
    exact = float(reference.row([0.0, -714.0, 0.0], 1, 1e-310)[0])
    static = jax.jit(lambda z, y: G.gamma_ce(z, y, 1e-310))(z, y)
    traced = jax.jit(lambda z, y, g: G.gamma_ce(z, y, g))(z, y, np.float64(1e-310))
    ce = float(G.gamma_ce(z, y, 0.0))
    assert math.isclose(float(static), exact, rel_tol=1e-12)
    assert float(traced) in (pytest.approx(exact, rel=1e-12), pytest.approx(ce, rel=1e-12))


# --------------------------------------------------------------------------- item 8: γ below float32's range


FLOAT32_GAMMA_CASES = [([-362.58032, 382.62015, -1550.9358], 0), ([-503.80093, 386.37497, -362.18695, 52.411232], 2),
                       ([632.2726, -102.88565], 1), ([0.0, -714.0, 3.0], 1), ([1000.1, 285.8], 1)]


@pytest.mark.parametrize("tailr", [False, True])
@pytest.mark.parametrize("gamma", [1e-310, 1e-300, 1e-200, 5e-324, 1e-46])
def test_float32_keeps_2e_5_with_gamma_below_its_range(backend, gamma, tailr):
    # Rows found by the issue's fuzz (γ = 1e-310: errors 2e-5 to 5e-5), padded with masked classes.
    z = np.array([row + [-np.inf] * (4 - len(row)) for row, _ in FLOAT32_GAMMA_CASES], dtype=np.float32)
    y = np.array([t for _, t in FLOAT32_GAMMA_CASES])
    args = (gamma, 0.0) if tailr else (gamma,)
    fn = G.tailr_value_and_grad if tailr else G.gamma_ce_value_and_grad
    loss, grad = _vg(backend, fn, z, y, *args, reduction="none")
    ref_l, ref_g = reference.batch(z.astype(np.float64).tolist(), y.tolist(), gamma, 0.0 if tailr else None)
    assert metrics.rel_err(loss, ref_l, "float32") <= TOL["float32"]
    assert metrics.rel_err(grad, ref_g, "float32") <= TOL["float32"]


@pytest.mark.parametrize("gamma", [1e-300, 1e-35])
def test_float32_tailr_keeps_2e_5_where_its_weight_is_subnormal(backend, gamma):
    # b = 0, W = p/γ below float32's smallest normal while W·(-log p) is above it: a subnormal W has
    # lost relative precision (4e-5 before), so the product is taken in log space there.
    targets = np.log(gamma) - np.linspace(92.0, 97.0, 24)
    z = np.stack([np.zeros_like(targets), targets], axis=1).astype(np.float32)
    y = np.ones(len(targets), dtype=np.int64)
    loss, grad = _vg(backend, G.tailr_value_and_grad, z, y, gamma, 0.0, reduction="none")
    ref_l, ref_g = reference.batch(z.astype(np.float64).tolist(), y.tolist(), gamma, 0.0)
    assert metrics.rel_err(loss, ref_l, "float32") <= TOL["float32"]
    assert metrics.rel_err(grad, ref_g, "float32") <= TOL["float32"]


# --------------------------------------------------------------------------- item 9: argument edge cases


BAD_GAMMAS = {"str array": (np.array("abc"), TypeError), "object None": (np.array(None, dtype=object), TypeError),
              "datetime64": (np.datetime64("2020-01-01"), TypeError), "np.bool_": (np.bool_(True), TypeError),
              "bool array": (np.array(True), TypeError), "numeric str": (np.array("0.3"), TypeError),
              "complex 0-d": (np.array(0.3 + 0j), TypeError), "complex": (0.3 + 0j, TypeError),
              "timedelta64": (np.timedelta64(1, "s"), TypeError), "str": ("0.3", TypeError),
              "nan array": (np.array(np.nan), ValueError), "1-d": (np.array([0.3]), ValueError)}


@pytest.mark.parametrize("name", ["gamma", "threshold", "label_smoothing"])
@pytest.mark.parametrize("case", list(BAD_GAMMAS), ids=list(BAD_GAMMAS))
def test_a_bad_scalar_option_raises_naming_the_argument(case, name):
    value, exc = BAD_GAMMAS[case]
    kw = {"gamma": 0.1, "threshold": 0.2, name: value}
    with pytest.raises(exc, match=name):
        G.tailr(np.zeros((1, 2)), np.array([0]), kw["gamma"], kw["threshold"], label_smoothing=kw.get(
            "label_smoothing", 0.0))


@pytest.mark.parametrize("value", [np.array(0.1), np.float32(0.1), np.array(0.1, dtype=np.float32), 0.1])
def test_label_smoothing_takes_a_0_d_array_like_gamma(value):
    z, y = np.array([[0.3, -1.0, 2.0]]), np.array([1])
    got = G.gamma_ce_value_and_grad(z, y, 0.2, label_smoothing=value)
    ref_l, ref_g = reference.batch(z.tolist(), [1], 0.2, None, float(value), "mean")
    assert metrics.rel_err(got[0], ref_l, "float64") <= TOL["float64"]
    assert metrics.rel_err(got[1], ref_g, "float64") <= TOL["float64"]
    with pytest.raises(ValueError, match="label_smoothing"):
        G.gamma_ce(z, y, 0.2, label_smoothing=np.array(1.0))


def test_a_traced_label_smoothing_under_jax_jit():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    z, y = np.array([[0.3, -np.inf, 2.0], [1.0, 0.5, -1.0]]), np.array([0, 2])
    run = jax.jit(lambda z, y, e: G.gamma_ce_value_and_grad(z, y, 0.2, reduction="none", label_smoothing=e))
    for eps in (0.1, 0.0, 1e-300):
        loss, grad = run(z, y, np.float64(eps))
        ref_l, ref_g = reference.batch(z.tolist(), y.tolist(), 0.2, None, eps)
        assert metrics.rel_err(np.asarray(loss), ref_l, "float64") <= TOL["float64"]  # ε = 0: no term, not 0·inf
        assert metrics.rel_err(np.asarray(grad), ref_g, "float64") <= TOL["float64"]
    assert np.all(np.isnan(run(z, y, np.float64(1.5))[0]))  # out of range and unreadable: NaN, not a number


def test_integer_0_d_arrays_are_numbers_in_range():
    z, y = np.array([[0.3, -1.0, 2.0]]), np.array([1])
    assert G.gamma_ce(z, y, np.array(1)) == G.gamma_ce(z, y, 1.0)
    assert G.gamma_ce(z, y, np.int64(0)) == G.gamma_ce(z, y, 0.0)
    with pytest.raises(ValueError, match="gamma"):
        G.gamma_ce(z, y, np.array(2))


def test_torch_scalar_options_of_a_bad_kind_raise_naming_the_argument():
    torch = pytest.importorskip("torch")
    from gammace_ref import torch as GT

    z, y = torch.zeros(2, 3), torch.tensor([0, 1])
    for value, exc in [(torch.tensor(True), TypeError), (torch.tensor(0.3, device="meta"), TypeError),
                       (torch.tensor(0.3 + 0j), TypeError), (torch.tensor([0.3]), ValueError)]:
        with pytest.raises(exc, match="gamma"):
            GT.gamma_ce(z, y, value, compiled=False)
        with pytest.raises(exc, match="gamma"):
            G.gamma_ce(z, y, value)
    with pytest.raises(TypeError, match="ignore_index"):
        GT.GammaCELoss(0.1, ignore_index=1.5)
    with pytest.raises(TypeError, match="threshold"):
        GT.TaiLrLoss(0.1, torch.tensor(True))
