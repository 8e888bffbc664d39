"""Second derivatives against the mpmath closed form, in every regime: NumPy core, torch, JAX, JAX jit.

For each regime of :mod:`gammace_ref.testing.regimes`, dtype, γ of
``regimes.GAMMAS`` and loss (γ-CE; TaiLr with b = 0.2, its weight held
constant), the Hessian-vector product of every row along a fixed random
direction is compared norm-wise per row with
:func:`gammace_ref.testing.reference.hvp_row` (≤ 1e-12 in float64, ≤ 2e-5 in
float32), as are full Hessian rows (small vocabularies) and forward-mode
tangents.  The closed form itself is checked against mpmath's numerical
derivative of the reference gradient.
"""

import functools
import math

import mpmath
import numpy as np
import pytest

import gammace_ref as G
from gammace_ref.testing import reference
from gammace_ref.testing.metrics import to_float64
from gammace_ref.testing import regimes as RG

# torch's own warnings while it imports and compiles (pyproject.toml makes warnings errors).
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")]

B = RG.TAILR_THRESHOLD
DTYPES = ("float64", "float32")
LOSSES = ("gamma_ce", "tailr")
SMALL = [r.name for r in RG.regimes("float64") if len(r.rows[0]) <= 5]
REGIMES = [r.name for r in RG.regimes("float64")]


def rowwise_error(got, ref, dtype):
    """Worst ``‖got_i - ref_i‖ / max(‖ref_i‖, tiny)`` over the rows ``i`` (norms scaled: no under/overflow)."""
    tiny = float(np.finfo(dtype).tiny)
    got = np.asarray(got, dtype=np.float64).reshape(len(ref), -1)
    ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    worst = 0.0
    for g, r in zip(got, ref):
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(r))):
            return np.inf
        scale = max(np.max(np.abs(r)), np.max(np.abs(g)), tiny)
        err = np.linalg.norm((g - r) / scale) * scale / max(np.linalg.norm(r / scale) * scale, tiny)
        worst = max(worst, err)
    return worst


@functools.lru_cache(maxsize=None)
def case(name, dtype):
    """``(z, y, v, rows, vrows)``: the regime's logits, targets and a direction, exact in ``dtype``."""
    regime = next(r for r in RG.regimes(dtype) if r.name == name)
    z, rows = RG.as_dtype_rows(regime, dtype)
    v = np.random.default_rng(len(rows[0]) + len(rows)).normal(size=z.shape).astype(dtype)
    return z, np.asarray(regime.targets), v, rows, [[float(x) for x in r] for r in v]


@functools.lru_cache(maxsize=None)
def ref_hvp(name, dtype, gamma, loss, eps=0.0):
    _, y, _, rows, vrows = case(name, dtype)
    b = B if loss == "tailr" else None
    return to_float64([reference.hvp_row(r, t, vr, gamma, b, eps) for r, t, vr in zip(rows, y, vrows)])


def core_hvp(z, y, v, gamma, loss, **kw):
    if loss == "tailr":
        return G.tailr_hvp(z, y, gamma, B, v, reduction="none", **kw)
    return G.gamma_ce_hvp(z, y, gamma, v, reduction="none", **kw)


def check(got, name, dtype, gamma, loss, eps=0.0):
    err = rowwise_error(got, ref_hvp(name, dtype, gamma, loss, eps), dtype)
    assert err <= RG.TOLERANCE[dtype], (name, dtype, gamma, loss, err)


# --------------------------------------------------------------------------- the closed form itself


@pytest.mark.parametrize("threshold", [None, B])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_reference_hessian_is_the_derivative_of_the_reference_gradient(gamma, threshold):
    # mpmath's numerical derivative of reference.row's gradient (the definitions) equals the closed form
    z, y = [0.3, -1.2, 2.0, 0.7], 1
    H = reference.hessian_row(z, y, gamma, threshold, label_smoothing=0.1)
    with mpmath.mp.workdps(30):  # (the steps need the gradient at far more digits: dps=150)
        for j in range(4):
            def grad_of(t, j=j):
                zz = [mpmath.mpf(x) for x in z]
                zz[j] += t
                return reference.row(zz, y, gamma, threshold, 0.1, dps=150)[1]
            for i in range(4):
                d = mpmath.diff(lambda t, i=i: grad_of(t)[i], 0)
                assert abs(d - H[i][j]) <= mpmath.mpf(10) ** -25 * max(1, abs(H[i][j])), (i, j)


def test_reference_hvp_is_the_hessian_times_v():
    for name in SMALL:
        _, y, _, rows, vrows = case(name, "float64")
        for r, t, vr in zip(rows, y, vrows):
            for gamma, b in ((0.3, None), (1 - 1e-9, None), (0.3, B)):
                H = reference.hessian_row(r, t, gamma, b)
                hv = reference.hvp_row(r, t, vr, gamma, b)
                with mpmath.mp.workdps(60):
                    for i, row in enumerate(H):
                        exact = mpmath.fsum(h * x for h, x in zip(row, vr))
                        bound = mpmath.mpf(10) ** -40 * (mpmath.fsum(abs(h * x) for h, x in zip(row, vr)) + 1e-300)
                        assert abs(exact - hv[i]) <= bound


# --------------------------------------------------------------------------- NumPy core


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REGIMES)
def test_core_hvp(name, dtype, loss):
    z, y, v, _, _ = case(name, dtype)
    for gamma in RG.GAMMAS:
        check(core_hvp(z, y, v, gamma, loss), name, dtype, gamma, loss)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", ["p_to_1", "p_to_0", "masked", "huge_logits", "ties"])
def test_core_hvp_with_label_smoothing(name, loss):
    z, y, v, _, _ = case(name, "float64")
    for gamma in (0.0, 0.5, 1.0 - 1e-9, 1.0):
        got = core_hvp(z, y, v, gamma, loss, label_smoothing=0.1)
        check(got, name, "float64", gamma, loss, eps=0.1)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", SMALL)
def test_core_hessian_rows(name, loss):
    # every row of the Hessian (the HVP along each basis vector) against reference.hessian_row
    z, y, _, rows, _ = case(name, "float64")
    b = B if loss == "tailr" else None
    for gamma in RG.GAMMAS:
        got = np.stack([core_hvp(z, y, np.broadcast_to(np.eye(z.shape[1])[j], z.shape).copy(), gamma, loss)
                        for j in range(z.shape[1])], axis=1)  # (N, C, C): [i, j] = column j of row i's Hessian
        for i, (r, t) in enumerate(zip(rows, y)):
            ref = to_float64(reference.hessian_row(r, t, gamma, b))
            err = rowwise_error(got[i].T, ref, "float64")  # Hessian rows (symmetric)
            assert err <= RG.TOLERANCE["float64"], (name, gamma, loss, i, err)


def test_hvp_reductions_axis_and_ignored_rows():
    z, y, v, _, _ = case("moderate", "float64")
    y2 = y.copy()
    y2[1] = -100
    per_row = G.gamma_ce_hvp(z, y2, 0.3, v, reduction="none", ignore_index=-100)
    assert np.all(per_row[1] == 0.0)
    np.testing.assert_array_equal(G.gamma_ce_hvp(z, y2, 0.3, v, reduction="sum", ignore_index=-100), per_row)
    np.testing.assert_allclose(G.gamma_ce_hvp(z, y2, 0.3, v, ignore_index=-100), per_row / 2, rtol=1e-15)
    np.testing.assert_allclose(G.gamma_ce_hvp(z.T, y2, 0.3, v.T, axis=0, reduction="none", ignore_index=-100),
                               per_row.T, rtol=1e-15)
    mask = y2 != -100
    np.testing.assert_array_equal(G.gamma_ce_hvp(z, y, 0.3, v, reduction="none", where=mask), per_row)


@pytest.mark.parametrize("bad, exc, match", [
    (np.ones((2, 2)), ValueError, r"v shape \(2, 2\) does not match logits shape \(3, 4\)"),
    (np.ones((3, 4), dtype=np.int64), TypeError, "v must have a real floating dtype"),
    ([[1.0] * 4] * 3, TypeError, "v must be an array"),
])
def test_hvp_rejects_a_bad_direction(bad, exc, match):
    z, y, _, _, _ = case("moderate", "float64")
    with pytest.raises(exc, match=match):
        G.gamma_ce_hvp(z, y, 0.3, bad)


# --------------------------------------------------------------------------- torch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REGIMES)
def test_torch_hvp_forward_over_reverse(torch, name, dtype, loss):
    import gammace_ref.torch as GT

    z, y, v, _, _ = case(name, dtype)
    zt, yt, vt = torch.tensor(z), torch.tensor(y), torch.tensor(v)
    for gamma in RG.GAMMAS:
        args = (gamma, B) if loss == "tailr" else (gamma,)
        f = lambda z: getattr(GT, loss)(z, yt, *args, reduction="sum", compiled=False)  # noqa: E731
        hv = torch.func.jvp(torch.func.grad(f), (zt,), (vt,))[1]
        check(hv.numpy(), name, dtype, gamma, loss)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", ["p_to_1", "p_to_0", "masked", "huge_logits", "two_classes"])
def test_torch_hvp_double_backward(torch, name, loss):
    import gammace_ref.torch as GT

    z, y, v, _, _ = case(name, "float64")
    for gamma in RG.GAMMAS:
        args = (gamma, B) if loss == "tailr" else (gamma,)
        zt = torch.tensor(z, requires_grad=True)
        (g,) = torch.autograd.grad(getattr(GT, loss)(zt, torch.tensor(y), *args, reduction="sum"), zt,
                                   create_graph=True)
        (hv,) = torch.autograd.grad((g * torch.tensor(v)).sum(), zt)
        check(hv.numpy(), name, "float64", gamma, loss)


def assert_hessian_rows(H, rows, y, gamma, b, tol, *label):
    """The diagonal blocks ``H[i, :, i, :]`` of a full Hessian against mpmath's rows, norm-wise per row."""
    for i, (r, t) in enumerate(zip(rows, y)):
        err = rowwise_error(H[i, :, i, :], to_float64(reference.hessian_row(r, t, gamma, b)), "float64")
        assert err <= tol, (*label, gamma, i, err)


def hessian_cases(name, loss):
    """``(z, y, rows, gamma, b, args)`` of regime ``name`` (float64) for every γ; ``args`` follow the targets."""
    z, y, _, rows, _ = case(name, "float64")
    b = B if loss == "tailr" else None
    for gamma in RG.GAMMAS:
        yield z, y, rows, gamma, b, ((gamma, B) if loss == "tailr" else (gamma,))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", SMALL)
def test_torch_hessian_rows(torch, name, loss):
    import gammace_ref.torch as GT

    for z, y, rows, gamma, b, args in hessian_cases(name, loss):
        H = torch.func.hessian(lambda z: getattr(GT, loss)(z, torch.tensor(y), *args, reduction="sum",
                                                           compiled=False))(torch.tensor(z)).numpy()
        assert_hessian_rows(H, rows, y, gamma, b, RG.TOLERANCE["float64"], name, loss)


# --------------------------------------------------------------------------- JAX


@pytest.fixture(scope="module")
def jax():
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    jax.config.update("jax_enable_x64", True)
    return jax


# Reverse over forward (jacrev of jacfwd) runs JAX's own transpose of the closed-form product, which
# regroups its terms: as documented (docs/transformations.md), two corners then lose digits -- an exact
# two-way tie as γ → 1 (K - R small, ~1e-7 relative at γ = 1 - 1e-9), and 1 - p ~ 1e-304 on XLA:CPU,
# which flushes the subnormal γ·(1 - p) products.  Forward over reverse (jax.hessian) keeps them exact.
REVERSE_OVER_FORWARD_LIMITS = ("p_to_1_extreme", "huge_logits")


def test_reverse_over_forward_limits_are_as_documented(jax):
    import jax.numpy as jnp

    import gammace_ref.jax as GJ

    for name in REVERSE_OVER_FORWARD_LIMITS:
        z, y, _, rows, _ = case(name, "float64")
        f = _jax_f(GJ, "gamma_ce", jnp.asarray(y), 1.0 - 1e-9)
        H = np.asarray(jax.jacrev(jax.jacfwd(f))(jnp.asarray(z)))
        assert_hessian_rows(H, rows, y, 1.0 - 1e-9, None, 1e-6, name)


def _jax_f(GJ, loss, y, gamma):
    args = (gamma, B) if loss == "tailr" else (gamma,)
    return lambda z: getattr(GJ, loss)(z, y, *args, reduction="sum")


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REGIMES)
def test_jax_hvp(jax, name, dtype, loss, jit):
    import jax.numpy as jnp

    import gammace_ref.jax as GJ

    z, y, v, _, _ = case(name, dtype)

    def hvp(z, v, gamma):
        return jax.jvp(jax.grad(_jax_f(GJ, loss, jnp.asarray(y), gamma)), (z,), (v,))[1]

    if jit:  # γ traced (float64): one compilation for every γ
        hvp = jax.jit(hvp)
    for gamma in RG.GAMMAS:
        got = hvp(jnp.asarray(z), jnp.asarray(v), jnp.asarray(gamma, dtype=jnp.float64) if jit else gamma)
        check(np.asarray(got), name, dtype, gamma, loss)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", SMALL)
def test_jax_hessian_rows_every_way(jax, name, loss):
    import jax.numpy as jnp

    import gammace_ref.jax as GJ

    for z, y, rows, gamma, b, _ in hessian_cases(name, loss):
        f = _jax_f(GJ, loss, jnp.asarray(y), gamma)
        ways = [jax.hessian, lambda f: jax.jit(jax.hessian(f))]
        if name not in REVERSE_OVER_FORWARD_LIMITS:
            ways.append(lambda f: jax.jacrev(jax.jacfwd(f)))
        for way in ways:
            H = np.asarray(way(f)(jnp.asarray(z)))
            assert_hessian_rows(H, rows, y, gamma, b, RG.TOLERANCE["float64"], name, loss)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REGIMES)
def test_jvp_tangents(jax, name, dtype):
    # forward mode on the loss: ⟨∇L_i, v_i⟩ per row, norm-wise (relative to Σ_j |∇L_ij v_ij|)
    import jax.numpy as jnp

    import gammace_ref.jax as GJ

    z, y, v, _, _ = case(name, dtype)
    for loss in LOSSES:
        b = B if loss == "tailr" else None
        for gamma in RG.GAMMAS:
            grad = RG.expected(name, dtype, gamma, b)[1]  # mpmath, rounded to float64 (≤ 1.1e-16)
            args = (gamma, B) if loss == "tailr" else (gamma,)
            f = lambda z: getattr(GJ, loss)(z, jnp.asarray(y), *args, reduction="none")  # noqa: E731
            for tangent in (jax.jvp(f, (jnp.asarray(z),), (jnp.asarray(v),))[1],
                            jax.linearize(f, jnp.asarray(z))[1](jnp.asarray(v))):
                for i in range(len(y)):
                    prods = grad[i] * v[i].astype(np.float64)  # exact to 1.1e-16 each; summed exactly
                    scale = max(math.fsum(np.abs(prods)), float(np.finfo(dtype).tiny))
                    err = abs(float(tangent[i]) - math.fsum(prods)) / scale
                    assert err <= RG.TOLERANCE[dtype], (name, loss, gamma, i, err)


def test_tailr_hessian_is_the_stop_gradient_one(jax):
    # the Hessian of -stop_gradient(clip(w, b, 1))·log p, written in plain JAX, not the Jacobian of the
    # paper's gradient field (which differentiates W: relatively 2.08 away at γ = 0.3, b = 0.2)
    import jax.numpy as jnp

    import gammace_ref.jax as GJ

    z, y, _, _, _ = case("moderate", "float64")
    zj, yj = jnp.asarray(z), jnp.asarray(y)

    def surrogate(z, gamma=0.3, b=0.2):
        lp = jnp.take_along_axis(jax.nn.log_softmax(z), yj[:, None], axis=-1)[:, 0]
        p = jnp.exp(lp)
        W = jnp.clip(p / (gamma + (1 - gamma) * p), b, 1.0)
        return jnp.sum(-jax.lax.stop_gradient(W) * lp)

    def field(z):  # the paper's gradient field, whose Jacobian differentiates W
        return jax.grad(lambda z: GJ.tailr(z, yj, 0.3, 0.2, reduction="sum"))(z)

    H = jax.hessian(lambda z: GJ.tailr(z, yj, 0.3, 0.2, reduction="sum"))(zj)
    np.testing.assert_allclose(H, jax.hessian(surrogate)(zj), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(field(zj), jax.grad(surrogate)(zj), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(G.tailr_hvp(z, y, 0.3, 0.2, z, reduction="sum"),
                               np.einsum("iajb,jb->ia", np.asarray(H), z), rtol=1e-13, atol=1e-15)


def test_every_jax_transformation_agrees(jax):
    import jax.numpy as jnp

    import gammace_ref.jax as GJ

    z, y, v, _, _ = case("moderate", "float64")
    zj, yj, vj = jnp.asarray(z), jnp.asarray(y), jnp.asarray(v)
    f = lambda z: GJ.gamma_ce(z, yj, 0.3, label_smoothing=0.1)  # noqa: E731
    loss, grad = G.gamma_ce_value_and_grad(z, y, 0.3, label_smoothing=0.1)
    hv = G.gamma_ce_hvp(z, y, 0.3, v, label_smoothing=0.1)
    tol = dict(rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(jax.grad(jax.checkpoint(f))(zj), grad, **tol)
    np.testing.assert_allclose(jax.jvp(jax.grad(jax.checkpoint(f)), (zj,), (vj,))[1], hv, **tol)
    np.testing.assert_allclose(jax.jacrev(f)(zj), grad, **tol)
    np.testing.assert_allclose(jax.jacfwd(f)(zj), grad, **tol)
    np.testing.assert_allclose(jax.grad(lambda z: jnp.vdot(jax.grad(f)(z), vj))(zj), hv, **tol)  # grad of grad
    np.testing.assert_allclose(jax.jvp(f, (zj,), (vj,))[1], np.sum(grad * v), **tol)
    batched = jax.vmap(jax.hessian(lambda z, y: GJ.gamma_ce(z, y, 0.3, reduction="sum")))(zj[:, None], yj[:, None])
    for i in range(len(y)):
        np.testing.assert_allclose(batched[i, 0, :, 0, :] @ v[i], G.gamma_ce_hvp(z[i:i + 1], y[i:i + 1], 0.3,
                                                                                   v[i:i + 1], reduction="sum")[0],
                                   **tol)
    with pytest.raises(NotImplementedError, match="third and higher derivatives"):
        jax.jacfwd(jax.hessian(f))(zj)
