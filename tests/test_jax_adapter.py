"""gammace_ref.jax: custom_vjp gradients under grad/jit/vmap, traced γ, errors, half precision.

That ``import gammace_ref`` loads no JAX is tested in test_api.py.
"""

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="JAX is not installed")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import gammace_ref as G  # noqa: E402
from gammace_ref import jax as GJ  # noqa: E402

LOGITS = np.random.default_rng(7).normal(0.0, 2.0, size=(6, 5))
TARGETS = np.array([0, 4, 2, 2, 1, 3])
Z, Y = jnp.asarray(LOGITS), jnp.asarray(TARGETS)
TOL = {"float32": 2e-6, "float64": 1e-13}  # XLA's exp/log1p differ from NumPy's by a few ulp


def _close(actual, expected, dtype):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=TOL[dtype],
                               atol=TOL[dtype] * 1e-3)


@pytest.mark.parametrize("gamma", [0.0, 1e-7, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_check_grads(gamma, reduction):
    cases = [(Z, Y, {}), (Z.T, Y.at[1].set(-100), dict(axis=0, ignore_index=-100, label_smoothing=0.2))]
    for z, y, kw in cases:  # check_grads feeds NumPy arrays to f for its finite differences
        check_grads(lambda z: GJ.gamma_ce(z, y, gamma, reduction=reduction, **kw), (z,), order=1, modes=["rev"])


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", [dict(), dict(axis=0, reduction="sum", ignore_index=2, label_smoothing=0.1)],
                         ids=["mean", "sum-axis0"])
def test_grad_and_value_and_grad_equal_the_core(jit, dtype, kw):
    z = (LOGITS.T if kw.get("axis") == 0 else LOGITS).astype(dtype)
    wrap = jax.jit if jit else (lambda f: f)
    f = lambda z: GJ.gamma_ce(z, Y, 0.3, **kw)  # noqa: E731
    loss, grad = wrap(jax.value_and_grad(f))(jnp.asarray(z))
    ref_l, ref_g = G.gamma_ce_value_and_grad(z, TARGETS, 0.3, **kw)
    assert loss.dtype == grad.dtype == dtype and grad.shape == z.shape
    _close(loss, ref_l, dtype)
    _close(grad, ref_g, dtype)
    _close(wrap(jax.grad(f))(jnp.asarray(z)), ref_g, dtype)
    _close(wrap(f)(jnp.asarray(z)), ref_l, dtype)


@pytest.mark.parametrize("axis", [-1, 0])
def test_vjp_with_a_per_row_cotangent(axis):
    z = Z if axis == -1 else Z.T
    ct = np.random.default_rng(1).normal(size=6)
    loss, vjp = jax.vjp(lambda z: GJ.gamma_ce(z, Y, 0.4, axis=axis, reduction="none", label_smoothing=0.1), z)
    ref_l, ref_g = G.gamma_ce_value_and_grad(LOGITS, TARGETS, 0.4, reduction="none", label_smoothing=0.1)
    _close(loss, ref_l, "float64")
    (g,) = vjp(jnp.asarray(ct))
    _close(g if axis == -1 else g.T, ct[:, None] * ref_g, "float64")


def test_numpy_inputs():
    loss = GJ.gamma_ce(LOGITS, TARGETS, 0.3)
    assert isinstance(loss, jax.Array)
    _close(loss, G.gamma_ce(LOGITS, TARGETS, 0.3), "float64")
    grad = jax.grad(lambda z: GJ.gamma_ce(z, TARGETS, 0.3))(LOGITS)  # the fwd rule gets the NumPy primal
    _close(grad, G.gamma_ce_grad(LOGITS, TARGETS, 0.3), "float64")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_vmap_equals_a_loop(reduction):
    rng = np.random.default_rng(2)
    zb, yb = rng.normal(0.0, 2.0, size=(3, 6, 5)), rng.integers(0, 5, size=(3, 6))
    yb[1, 2] = -1
    kw = dict(reduction=reduction, ignore_index=-1, label_smoothing=0.1)
    f = lambda z, y: GJ.gamma_ce(z, y, 0.2, **kw)  # noqa: E731
    loss = jax.jit(jax.vmap(f))(jnp.asarray(zb), jnp.asarray(yb))
    grad = jax.jit(jax.vmap(jax.grad(f)))(jnp.asarray(zb), jnp.asarray(yb))
    ref = [G.gamma_ce_value_and_grad(zb[i], yb[i], 0.2, **kw) for i in range(3)]
    _close(loss, [r[0] for r in ref], "float64")
    _close(grad, np.stack([r[1] for r in ref]), "float64")
    per_row = jax.jit(jax.vmap(lambda z, y: GJ.gamma_ce(z, y, 0.2, reduction="none", ignore_index=-1)))(zb, yb)
    _close(per_row, np.stack([G.gamma_ce(zb[i], yb[i], 0.2, reduction="none", ignore_index=-1)
                              for i in range(3)]), "float64")


def test_tailr_gradient_and_traced_threshold():
    f = jax.jit(jax.value_and_grad(lambda z, g, b: GJ.tailr(z, Y, g, b, label_smoothing=0.1)))
    for g, b in ((0.1, 0.3), (0.5, 0.0), (1.0, 0.2), (0.0, 1.0)):
        loss, grad = f(Z, g, b)
        ref_l, ref_g = G.tailr_value_and_grad(LOGITS, TARGETS, g, b, label_smoothing=0.1)
        _close(loss, ref_l, "float64")
        _close(grad, ref_g, "float64")
        _close(jax.grad(lambda z: GJ.tailr(z, Y, g, b, label_smoothing=0.1))(Z), G.tailr_grad(
            LOGITS, TARGETS, g, b, label_smoothing=0.1), "float64")
    for g in (0.0, 0.3, 1.0):  # b = 0: the γ-CE gradient
        np.testing.assert_allclose(jax.grad(lambda z: GJ.tailr(z, Y, g, 0.0))(Z),
                                   jax.grad(lambda z: GJ.gamma_ce(z, Y, g))(Z), rtol=4e-16, atol=0)


def test_gamma_schedule_traced_without_recompiling():
    traces = []

    @jax.jit
    def step(z, gamma):
        traces.append(None)  # runs once per trace, never per call
        return jax.value_and_grad(lambda z: GJ.gamma_ce(z, Y, gamma, label_smoothing=0.1))(z)

    schedule = G.gamma_schedule(0.0, 1.0, total_steps=4)
    for t in range(6):
        loss, grad = step(Z, jnp.asarray(schedule(t)))
        ref_l, ref_g = G.gamma_ce_value_and_grad(LOGITS, TARGETS, schedule(t), label_smoothing=0.1)
        _close(loss, ref_l, "float64")
        _close(grad, ref_g, "float64")
    loss, grad = step(Z, jnp.asarray(1.5))  # traced, out of [0, 1]: NaN, not an exception
    assert math.isnan(loss) and np.all(np.isnan(grad))
    assert len(traces) == 1


def test_gamma_is_differentiated_threshold_and_targets_are_constants():
    # dL/dγ of γ-CE is the core's exact one; TaiLr's W is a stop-gradient (0 in γ and b); targets get float0.
    dz, dg = jax.grad(lambda z, g: GJ.gamma_ce(z, Y, g), argnums=(0, 1))(Z, jnp.asarray(0.3))
    _close(dz, G.gamma_ce_grad(LOGITS, TARGETS, 0.3), "float64")
    _close(dg, G.gamma_ce_dgamma(LOGITS, TARGETS, 0.3), "float64")
    assert jax.grad(lambda b: GJ.tailr(Z, Y, 0.3, b))(0.2) == 0.0
    assert jax.grad(lambda g: GJ.tailr(Z, Y, g, 0.2))(0.3) == 0.0
    dy = jax.grad(lambda y: GJ.gamma_ce(Z, y, 0.3), allow_int=True)(Y)
    assert dy.dtype == jax.dtypes.float0 and dy.shape == Y.shape


def test_hessian_is_forward_over_reverse():
    z, y = LOGITS[:2, :4], TARGETS[:2] % 4
    h = jax.jit(jax.hessian(lambda z: GJ.gamma_ce(z, jnp.asarray(y), 0.3)))(jnp.asarray(z))
    e = np.eye(z.size).reshape(z.size, *z.shape) * 1e-6
    fd = [(G.gamma_ce_grad(z + d, y, 0.3) - G.gamma_ce_grad(z - d, y, 0.3)) / 2e-6 for d in e]
    np.testing.assert_allclose(np.moveaxis(np.asarray(h).reshape(*z.shape, -1), -1, 0), fd, atol=1e-8)


_T_BAD = TARGETS.copy()
_T_BAD[2] = 9


# (arguments, error, message, raised under jit too: the value is static, not traced)
@pytest.mark.parametrize("args, exc, match, static", [
    ((LOGITS, TARGETS, math.nan), ValueError, r"gamma must be in \[0, 1\], got nan", True),
    ((LOGITS, TARGETS, 1.5), ValueError, r"gamma must be in \[0, 1\], got 1.5", True),
    ((LOGITS, TARGETS, jnp.asarray(1.5)), ValueError, r"gamma must be in \[0, 1\], got 1.5", False),
    ((LOGITS, TARGETS, True), TypeError, r"gamma must be a real number .* bool True", True),
    ((LOGITS, _T_BAD, 0.1), ValueError, r"targets: value 9 at index \(2,\) is out of range \[0, 5\)", False),
    ((LOGITS, TARGETS.astype(float), 0.1), TypeError, r"targets must have an integer dtype .*float", True),
    ((LOGITS.astype(np.int32), TARGETS, 0.1), TypeError, r"logits must have a real floating dtype, got int32", True),
    ((LOGITS, TARGETS[:5], 0.1), ValueError, r"targets shape \(5,\) does not match logits shape \(6, 5\)", True),
    ((LOGITS, TARGETS, 0.1, dict(reduction="avg")), ValueError, r"reduction must be one of .*'avg'", True),
    ((LOGITS, TARGETS, 0.1, dict(axis=2)), ValueError, r"axis 2 is out of range", True),
    ((LOGITS, TARGETS, 0.1, dict(threshold=2.0)), ValueError, r"threshold must be in \[0, 1\], got 2.0", True),
], ids=["gamma-nan", "gamma-1.5", "gamma-array-1.5", "gamma-bool", "target-9", "float-targets", "int-logits",
        "shapes", "reduction", "axis", "threshold"])
def test_bad_input_raises_a_clear_error(args, exc, match, static):
    z, y, gamma = (jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in args[:3])
    kw = dict(args[3]) if len(args) > 3 else {}
    b = kw.pop("threshold", None)
    f = (lambda z, y: GJ.gamma_ce(z, y, gamma, **kw)) if b is None else (lambda z, y: GJ.tailr(z, y, gamma, b))
    calls = [f] + ([lambda z, y: jax.grad(f)(z, y)] if z.dtype == jnp.float64 else [])
    calls += [jax.jit(f)] if static else []
    for call in calls:
        with pytest.raises(exc, match=match):
            call(z, y)


def test_traced_bad_values_under_jit_give_nan():
    f = jax.jit(jax.value_and_grad(lambda z, y: GJ.gamma_ce(z, y, 0.1, reduction="none").sum()))
    loss, grad = f(Z, jnp.asarray(_T_BAD))
    assert math.isnan(loss) and np.all(np.isnan(grad[2]))
    assert np.all(np.isfinite(np.delete(np.asarray(grad), 2, axis=0)))
    per_row = jax.jit(lambda z, y: GJ.gamma_ce(z, y, 0.1, reduction="none"))(Z, jnp.asarray(_T_BAD))
    assert np.isnan(per_row[2]) and np.all(np.isfinite(np.delete(np.asarray(per_row), 2)))
    loss, grad = jax.jit(jax.value_and_grad(lambda z, g: GJ.tailr(z, Y, g, 0.2)))(Z, 1.5)
    assert math.isnan(loss) and np.all(np.isnan(grad))


@pytest.mark.parametrize("low", ["bfloat16", "float16"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_half_precision(low, jit):
    z = jnp.asarray(LOGITS).astype(low)
    f = jax.value_and_grad(lambda z: GJ.gamma_ce(z, Y, 0.2, label_smoothing=0.1))
    loss, grad = (jax.jit(f) if jit else f)(z)
    # The core's contract: the loss in the compute dtype (float32), the gradient in logits' dtype.
    assert loss.dtype == jnp.float32 and grad.dtype == z.dtype
    ref_l, ref_g = f(z.astype(jnp.float32))
    assert abs(float(loss) - float(ref_l)) <= 1e-6 * abs(float(ref_l))
    np.testing.assert_allclose(np.asarray(grad.astype(jnp.float32)), ref_g, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_optax_drop_in_with_where(jit):
    # gamma_ce(logits, labels, 0.0, reduction="none", where=mask) is
    # optax.softmax_cross_entropy_with_integer_labels(logits, labels, where=mask): values and gradients
    optax = pytest.importorskip("optax", reason="optax is not installed")
    mask = jnp.asarray([True, False, True, True, False, True])
    ct = jnp.asarray(np.random.default_rng(5).normal(size=6))
    ours = lambda z: GJ.gamma_ce(z, Y, 0.0, reduction="none", where=mask)  # noqa: E731
    theirs = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, Y, where=mask)  # noqa: E731
    wrap = jax.jit if jit else (lambda f: f)
    np.testing.assert_allclose(wrap(ours)(Z), wrap(theirs)(Z), rtol=1e-14, atol=0)
    assert np.all(np.asarray(wrap(ours)(Z))[~np.asarray(mask)] == 0.0)
    np.testing.assert_allclose(wrap(jax.grad(lambda z: jnp.vdot(ct, ours(z))))(Z),
                               wrap(jax.grad(lambda z: jnp.vdot(ct, theirs(z))))(Z), rtol=1e-13, atol=1e-16)
    # no ignore_index by default, as optax: a negative label is an error, not an ignored target
    with pytest.raises(ValueError, match="out of range"):
        GJ.gamma_ce(Z, Y.at[0].set(-100), 0.0)
