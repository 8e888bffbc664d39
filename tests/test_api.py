"""Semantics: reductions, ignore_index, class axis, dtypes, relations, finite differences."""

import math

import numpy as np
import pytest

import gammace_ref as G
from gammace_ref.testing import metrics, reference, regimes

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0.0, 2.0, size=(6, 5))
TARGETS = np.array([0, 4, 2, 2, 1, 3])


@pytest.mark.parametrize("which", ["gamma_ce", "tailr"])
def test_value_grad_and_value_and_grad_agree(backend, which):
    extra = (0.3,) if which == "tailr" else ()
    vg = getattr(G, f"{which}_value_and_grad")
    loss, grad = backend.run(vg, LOGITS, TARGETS, 0.1, *extra, label_smoothing=0.1)
    assert backend.run(getattr(G, which), LOGITS, TARGETS, 0.1, *extra, label_smoothing=0.1) == loss
    np.testing.assert_array_equal(
        backend.run(getattr(G, f"{which}_grad"), LOGITS, TARGETS, 0.1, *extra, label_smoothing=0.1), grad)


def test_reductions_and_ignore_index_against_mpmath(backend):
    y = np.array([0, -100, 2, 2, -100, 3])
    rows = [list(r) for r in LOGITS]
    for reduction in ("none", "sum", "mean"):
        loss, grad = backend.run(G.gamma_ce_value_and_grad, LOGITS, y, 0.2, reduction=reduction,
                                 ignore_index=-100)
        ref_l, ref_g = reference.batch(rows, list(y), 0.2, reduction=reduction, ignore_index=-100)
        assert metrics.rel_err(loss, ref_l, "float64") <= 1e-13
        assert metrics.rel_err(grad, ref_g, "float64") <= 1e-13
        assert np.all(grad[[1, 4]] == 0.0)
    assert np.shape(loss) == ()


def test_mean_over_no_counted_target_is_zero(backend):
    y = np.full(6, -1)
    for fn, extra in ((G.gamma_ce_value_and_grad, ()), (G.tailr_value_and_grad, (0.2,))):
        loss, grad = backend.run(fn, LOGITS, y, 0.1, *extra, ignore_index=-1, label_smoothing=0.1)
        assert loss == 0.0 and np.all(grad == 0.0)


def test_ignored_rows_may_be_fully_masked(backend):
    z = LOGITS.copy()
    z[1] = -np.inf
    y = TARGETS.copy()
    y[1] = -100
    loss, grad = backend.run(G.gamma_ce_value_and_grad, z, y, 0.1, ignore_index=-100, label_smoothing=0.1)
    assert np.isfinite(loss) and np.all(np.isfinite(grad)) and np.all(grad[1] == 0.0)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_class_axis_anywhere(backend, axis):
    z = RNG.normal(size=(3, 4, 5))  # class axis `axis`
    moved = np.moveaxis(z, axis, -1)
    y = RNG.integers(0, z.shape[axis], size=moved.shape[:-1])
    loss, grad = backend.run(G.gamma_ce_value_and_grad, z, y, 0.3, axis=axis, reduction="none")
    loss_last, grad_last = G.gamma_ce_value_and_grad(moved, y, 0.3, reduction="none")
    # Against NumPy's result: XLA's log1p/expm1 differ from NumPy's by up to
    # ~100 ulp (both stay within 2e-14 of mpmath), hence 1e-13, not 1e-15.
    np.testing.assert_allclose(loss, loss_last, rtol=1e-13)
    np.testing.assert_allclose(np.moveaxis(grad, axis, -1), grad_last, rtol=1e-13, atol=1e-300)
    assert grad.shape == z.shape and loss.shape == y.shape


def test_one_dimensional_logits_single_example(backend):
    loss, grad = backend.run(G.gamma_ce_value_and_grad, LOGITS[0], np.array(1), 0.5)
    ref_l, ref_g = reference.row(list(LOGITS[0]), 1, 0.5)
    assert metrics.rel_err(loss, [ref_l], "float64") <= 1e-13
    assert metrics.rel_err(grad, ref_g, "float64") <= 1e-13


def test_half_precision_computes_in_float32(backend):
    if backend.kind.value == "array_api_strict":
        pytest.skip("array-api-strict has no float16/bfloat16")
    xp = backend.xp
    torch_like = backend.family == "torch"
    z = backend.asarray(LOGITS.astype(np.float32 if torch_like else np.float16))
    low = backend.module.bfloat16 if torch_like else z.dtype
    z = xp.astype(z, low)
    y = backend.asarray(TARGETS)
    loss, grad = backend.call(G.gamma_ce_value_and_grad, z, y, 0.1)
    assert loss.dtype == xp.float32 and grad.dtype == low
    exact = G.gamma_ce_value_and_grad(backend.numpy(xp.astype(z, xp.float64)), TARGETS, 0.1)
    assert abs(float(backend.numpy(loss)) - exact[0]) <= 1e-6 * exact[0]
    np.testing.assert_allclose(backend.numpy(xp.astype(grad, xp.float32)), exact[1], rtol=1e-2, atol=1e-4)


def test_int32_and_uint8_targets(backend):
    for dt in (np.int32, np.uint8):
        loss = backend.run(G.gamma_ce, LOGITS, TARGETS.astype(dt), 0.1)
        assert loss == pytest.approx(G.gamma_ce(LOGITS, TARGETS, 0.1), rel=1e-15)


def test_inputs_are_not_modified(backend):
    z, y = backend.asarray(LOGITS), backend.asarray(TARGETS)
    backend.call(G.tailr_value_and_grad, z, y, 0.1, 0.2, label_smoothing=0.1, ignore_index=2)
    np.testing.assert_array_equal(backend.numpy(z), LOGITS)
    np.testing.assert_array_equal(backend.numpy(y), TARGETS)


# --- traced / lazy behaviour ------------------------------------------------


def test_traced_gamma_and_threshold_under_jit():
    jax = pytest.importorskip("jax", reason="jax not installed")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    f = jax.jit(lambda z, y, g, b: G.tailr_value_and_grad(z, y, g, b))
    z, y = jnp.asarray(LOGITS), jnp.asarray(TARGETS)
    for g, b in ((0.1, 0.3), (0.0, 0.0), (1.0, 0.2)):
        loss, grad = f(z, y, g, b)
        ref_l, ref_g = G.tailr_value_and_grad(LOGITS, TARGETS, g, b)
        assert float(loss) == pytest.approx(float(ref_l), rel=1e-14)
        np.testing.assert_allclose(np.asarray(grad), ref_g, rtol=1e-13, atol=1e-300)
    loss, grad = f(z, y, 1.5, 0.2)  # out of [0, 1]: cannot raise under jit, must not look valid
    assert math.isnan(float(loss)) and np.all(np.isnan(np.asarray(grad)))


def test_invalid_target_under_jit_gives_nan_for_that_row():
    jax = pytest.importorskip("jax", reason="jax not installed")
    jax.config.update("jax_enable_x64", True)
    y = TARGETS.copy()
    y[2] = 9
    f = jax.jit(lambda z, y: G.gamma_ce_value_and_grad(z, y, 0.1, reduction="none"))
    loss, grad = (np.asarray(v) for v in f(jax.numpy.asarray(LOGITS), jax.numpy.asarray(y)))
    assert np.isnan(loss[2]) and np.all(np.isnan(grad[2]))
    assert np.all(np.isfinite(np.delete(loss, 2))) and np.all(np.isfinite(np.delete(grad, 2, axis=0)))
    mean = jax.jit(lambda z, y: G.gamma_ce(z, y, 0.1))(jax.numpy.asarray(LOGITS), jax.numpy.asarray(y))
    assert math.isnan(float(mean))


# --- elementwise building blocks ------------------------------------------


@pytest.mark.parametrize("gamma", regimes.GAMMAS)
def test_building_blocks_on_log_p(backend, dtype, gamma):
    import mpmath

    big = -1e300 if dtype == "float64" else -1e38
    logp = np.array([-1e-30, -1e-9, -0.3, -2.0, -40.0, -800.0, big, -np.inf], dtype=dtype)
    tol = regimes.TOLERANCE[dtype]
    value = backend.run(G.gamma_ce_from_logp, logp, gamma)
    dlogp = backend.run(G.gamma_ce_dlogp, logp, gamma)
    weight = backend.run(G.tailr_weight, logp, gamma, 0.2)
    with mpmath.workdps(60):
        for lp, v, d, wt in zip(logp, value, dlogp, weight):
            p, q, g = mpmath.exp(lp), -mpmath.expm1(lp), mpmath.mpf(gamma)
            c = 1 - g
            L = q if c == 0 else (-mpmath.log1p(-c * q) / c if c * q < 0.5 else -mpmath.log(g + c * p) / c)
            w = mpmath.mpf(1) if g == 0 else p / (g + c * p)
            assert metrics.rel_err([v], [L], dtype) <= tol
            assert metrics.rel_err([-d], [w], dtype) <= tol
            assert metrics.rel_err([wt], [min(max(w, mpmath.mpf(0.2)), 1)], dtype) <= tol


def test_building_blocks_agree_with_logits_path():
    logp = LOGITS - np.log(np.exp(LOGITS).sum(-1, keepdims=True))
    tl = logp[np.arange(6), TARGETS]
    np.testing.assert_allclose(G.gamma_ce_from_logp(tl, 0.3), G.gamma_ce(LOGITS, TARGETS, 0.3, reduction="none"),
                               rtol=1e-14)


def test_core_is_backend_blind():
    import ast
    import pathlib

    root = pathlib.Path(G.__file__).parent
    for name in ("_core.py", "_validation.py", "_api.py", "_schedule.py", "__init__.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for mod in mods:
                assert mod.split(".")[0] not in {"numpy", "torch", "jax", "jaxlib", "cupy", "dask"}, (name, mod)


def test_import_loads_no_array_library():
    import subprocess
    import sys

    code = "import sys, gammace_ref; print(sorted({'numpy', 'torch', 'jax', 'cupy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
