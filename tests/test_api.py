"""Semantics: reductions, ignore_index, class axis, dtypes, relations, finite differences."""

import math

import numpy as np
import pytest

import gammace_ref as G
from gammace_ref.testing import reference, regimes

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0.0, 2.0, size=(6, 5))
TARGETS = np.array([0, 4, 2, 2, 1, 3])


def _run(backend, fn, z, y, *args, **kw):
    return backend.call(lambda z, y: fn(z, y, *args, **kw), backend.asarray(z), backend.asarray(y))


def _np(backend, out):
    return tuple(backend.numpy(o) for o in out) if isinstance(out, tuple) else backend.numpy(out)


@pytest.mark.parametrize("which", ["gamma_ce", "tailr"])
def test_value_grad_and_value_and_grad_agree(backend, which):
    extra = (0.3,) if which == "tailr" else ()
    vg = getattr(G, f"{which}_value_and_grad")
    loss, grad = _np(backend, _run(backend, vg, LOGITS, TARGETS, 0.1, *extra, label_smoothing=0.1))
    assert _np(backend, _run(backend, getattr(G, which), LOGITS, TARGETS, 0.1, *extra,
                             label_smoothing=0.1)) == loss
    np.testing.assert_array_equal(
        _np(backend, _run(backend, getattr(G, f"{which}_grad"), LOGITS, TARGETS, 0.1, *extra,
                          label_smoothing=0.1)), grad)


def test_reductions_and_ignore_index_against_mpmath(backend):
    y = np.array([0, -100, 2, 2, -100, 3])
    rows = [list(r) for r in LOGITS]
    for reduction in ("none", "sum", "mean"):
        loss, grad = _np(backend, _run(backend, G.gamma_ce_value_and_grad, LOGITS, y, 0.2,
                                       reduction=reduction, ignore_index=-100))
        ref_l, ref_g = reference.batch(rows, list(y), 0.2, reduction=reduction, ignore_index=-100)
        assert regimes.rel_err(loss, ref_l, "float64") <= 1e-13
        assert regimes.rel_err(grad, ref_g, "float64") <= 1e-13
        assert np.all(grad[[1, 4]] == 0.0)
    assert np.shape(loss) == ()


def test_mean_over_no_counted_target_is_zero(backend):
    y = np.full(6, -1)
    for fn, extra in ((G.gamma_ce_value_and_grad, ()), (G.tailr_value_and_grad, (0.2,))):
        loss, grad = _np(backend, _run(backend, fn, LOGITS, y, 0.1, *extra, ignore_index=-1,
                                       label_smoothing=0.1))
        assert loss == 0.0 and np.all(grad == 0.0)


def test_ignored_rows_may_be_fully_masked(backend):
    z = LOGITS.copy()
    z[1] = -np.inf
    y = TARGETS.copy()
    y[1] = -100
    loss, grad = _np(backend, _run(backend, G.gamma_ce_value_and_grad, z, y, 0.1, ignore_index=-100,
                                   label_smoothing=0.1))
    assert np.isfinite(loss) and np.all(np.isfinite(grad)) and np.all(grad[1] == 0.0)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_class_axis_anywhere(backend, axis):
    z = RNG.normal(size=(3, 4, 5))  # class axis `axis`
    moved = np.moveaxis(z, axis, -1)
    y = RNG.integers(0, z.shape[axis], size=moved.shape[:-1])
    loss, grad = _np(backend, _run(backend, G.gamma_ce_value_and_grad, z, y, 0.3, axis=axis,
                                   reduction="none"))
    loss_last, grad_last = G.gamma_ce_value_and_grad(moved, y, 0.3, reduction="none")
    # Against NumPy's result: XLA's log1p/expm1 differ from NumPy's by up to
    # ~100 ulp (both stay within 2e-14 of mpmath), hence 1e-13, not 1e-15.
    np.testing.assert_allclose(loss, loss_last, rtol=1e-13)
    np.testing.assert_allclose(np.moveaxis(grad, axis, -1), grad_last, rtol=1e-13, atol=1e-300)
    assert grad.shape == z.shape and loss.shape == y.shape


def test_one_dimensional_logits_single_example(backend):
    loss, grad = _np(backend, _run(backend, G.gamma_ce_value_and_grad, LOGITS[0], np.array(1), 0.5))
    ref_l, ref_g = reference.row(list(LOGITS[0]), 1, 0.5)
    assert regimes.rel_err(loss, [ref_l], "float64") <= 1e-13
    assert regimes.rel_err(grad, ref_g, "float64") <= 1e-13


def test_half_precision_computes_in_float32(backend):
    if backend.kind.value == "array_api_strict":
        pytest.skip("array-api-strict has no float16/bfloat16")
    xp = backend.xp
    torch_like = backend.kind.value.startswith("torch")
    z = backend.asarray(LOGITS.astype(np.float32 if torch_like else np.float16))
    low = backend.module.bfloat16 if torch_like else z.dtype
    z = xp.astype(z, low)
    y = backend.asarray(TARGETS)
    loss, grad = backend.call(lambda z, y: G.gamma_ce_value_and_grad(z, y, 0.1), z, y)
    assert loss.dtype == xp.float32 and grad.dtype == low
    exact = G.gamma_ce_value_and_grad(backend.numpy(xp.astype(z, xp.float64)), TARGETS, 0.1)
    assert abs(float(backend.numpy(loss)) - exact[0]) <= 1e-6 * exact[0]
    np.testing.assert_allclose(backend.numpy(xp.astype(grad, xp.float32)), exact[1], rtol=1e-2, atol=1e-4)


def test_int32_and_uint8_targets(backend):
    for dt in (np.int32, np.uint8):
        loss = _np(backend, _run(backend, G.gamma_ce, LOGITS, TARGETS.astype(dt), 0.1))
        assert loss == pytest.approx(G.gamma_ce(LOGITS, TARGETS, 0.1), rel=1e-15)


def test_inputs_are_not_modified(backend):
    z, y = backend.asarray(LOGITS), backend.asarray(TARGETS)
    backend.call(lambda z, y: G.tailr_value_and_grad(z, y, 0.1, 0.2, label_smoothing=0.1, ignore_index=2), z, y)
    np.testing.assert_array_equal(backend.numpy(z), LOGITS)
    np.testing.assert_array_equal(backend.numpy(y), TARGETS)


# --- relations -------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_tailr_with_zero_threshold_has_the_gamma_ce_gradient(backend, eps):
    z = np.concatenate([LOGITS, [[60.0, 0.0, 0.0, 1.0, -np.inf]]])
    y = np.append(TARGETS, 0)
    for gamma in regimes.GAMMAS:
        g1 = _np(backend, _run(backend, G.gamma_ce_grad, z, y, gamma, label_smoothing=eps))
        g2 = _np(backend, _run(backend, G.tailr_grad, z, y, gamma, 0.0, label_smoothing=eps))
        np.testing.assert_allclose(g2, g1, rtol=4e-16, atol=0)


def test_tailr_gamma_one_is_dft(backend):
    # γ = 1, b = 0: weight w = p, loss sg(p)·(-log p) (DFT token scaling).
    loss, grad = _np(backend, _run(backend, G.tailr_value_and_grad, LOGITS, TARGETS, 1.0, 0.0, reduction="none"))
    logp = LOGITS - np.log(np.exp(LOGITS).sum(-1, keepdims=True))
    p = np.exp(logp[np.arange(6), TARGETS])
    np.testing.assert_allclose(loss, -p * logp[np.arange(6), TARGETS], rtol=1e-14)
    np.testing.assert_allclose(grad, p[:, None] * (np.exp(logp) - np.eye(5)[TARGETS]), rtol=1e-13)


def test_tailr_matches_official_criterion_formula(backend):
    # thu-coai/TaiLr fairseq/criterions/tailr.py, restated in NumPy: softmax().log(),
    # w = exp(log p - log(γ + (1-γ)p)) clamped to [b, 1], loss summed over
    # non-pad tokens, (1-ε)·Σ w·nll + ε/C·Σ smooth.
    gamma, b, eps, pad = 0.1, 0.3, 0.1, 1
    z = RNG.normal(0.0, 3.0, size=(8, 7))
    y = np.array([0, 1, 2, 3, 1, 5, 6, 4])
    lprobs = np.log(np.exp(z) / np.exp(z).sum(-1, keepdims=True))
    nll = -lprobs[np.arange(8), y]
    smooth = -lprobs.sum(-1)
    keep = y != pad
    p = np.exp(-nll)
    w = np.clip(np.exp(np.log(p) - np.log(gamma + (1 - gamma) * p)), b, 1.0)
    official = (1 - eps) * (w * nll * keep).sum() + eps / 7 * (smooth * keep).sum()
    ours = _np(backend, _run(backend, G.tailr, z, y, gamma, b, ignore_index=pad, label_smoothing=eps,
                             reduction="sum"))
    assert ours == pytest.approx(official, rel=1e-13)


def test_gamma_zero_is_torch_cross_entropy(backend):
    torch = pytest.importorskip("torch", reason="torch not installed: no F.cross_entropy to compare with")
    F = torch.nn.functional
    z = RNG.normal(0.0, 3.0, size=(4, 6, 3))  # (N, C, d1): torch's class axis 1
    y = RNG.integers(0, 6, size=(4, 3))
    y[0, 1] = -100
    for reduction in ("none", "sum", "mean"):
        for eps in (0.0, 0.2):
            zt = torch.tensor(z, requires_grad=True)
            ref = F.cross_entropy(zt, torch.tensor(y), reduction=reduction, label_smoothing=eps)
            ref.backward(torch.ones_like(ref))
            loss, grad = _np(backend, _run(backend, G.gamma_ce_value_and_grad, z, y, 0.0, axis=1,
                                           reduction=reduction, ignore_index=-100, label_smoothing=eps))
            np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-13)
            np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-12, atol=1e-15)


# --- finite differences ----------------------------------------------------


def _richardson(f, z, h=1e-3):
    """∂f/∂z by central differences, two Richardson steps (error O(h^6))."""
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        def d(step):
            zp, zm = z.copy(), z.copy()
            zp[idx] += step
            zm[idx] -= step
            return (f(zp) - f(zm)) / (2 * step)
        d1, d2, d4 = d(h), d(h / 2), d(h / 4)
        r1, r2 = (4 * d2 - d1) / 3, (4 * d4 - d2) / 3
        g[idx] = (16 * r2 - r1) / 15
    return g


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.8, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gamma_ce_grad_matches_finite_differences(backend, gamma, reduction):
    z = LOGITS[:3]
    y = TARGETS[:3]
    kw = dict(reduction=reduction, label_smoothing=0.1)
    f = lambda v: float(G.gamma_ce(v, y, gamma, **kw))  # noqa: E731
    fd = _richardson(f, z)
    grad = _np(backend, _run(backend, G.gamma_ce_grad, z, y, gamma, **kw))
    np.testing.assert_allclose(grad, fd, rtol=1e-8, atol=1e-11)


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
    xp_logp = backend.asarray(logp)
    tol = regimes.TOLERANCE[dtype]
    value = backend.numpy(backend.call(lambda a: G.gamma_ce_from_logp(a, gamma), xp_logp))
    dlogp = backend.numpy(backend.call(lambda a: G.gamma_ce_dlogp(a, gamma), xp_logp))
    weight = backend.numpy(backend.call(lambda a: G.tailr_weight(a, gamma, 0.2), xp_logp))
    with mpmath.workdps(60):
        for lp, v, d, wt in zip(logp, value, dlogp, weight):
            p, q, g = mpmath.exp(lp), -mpmath.expm1(lp), mpmath.mpf(gamma)
            c = 1 - g
            L = q if c == 0 else (-mpmath.log1p(-c * q) / c if c * q < 0.5 else -mpmath.log(g + c * p) / c)
            w = mpmath.mpf(1) if g == 0 else p / (g + c * p)
            assert regimes.rel_err([v], [L], dtype) <= tol
            assert regimes.rel_err([-d], [w], dtype) <= tol
            assert regimes.rel_err([wt], [min(max(w, mpmath.mpf(0.2)), 1)], dtype) <= tol


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
