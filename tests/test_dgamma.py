"""dL/dγ, d²L/dγ² and d∇L/dγ against mpmath, on the core and under JAX and torch; a learned γ trains.

The reference (:func:`gammace_ref.testing.reference.gamma_derivatives`) is
mpmath's numerical derivative of the definition ``L(γ) = -log(γ + (1-γ)p)/(1-γ)``
at enough digits, independent of the closed forms and series of the core.
"""

import functools

import numpy as np
import pytest

import gammace_ref as G
from gammace_ref.testing import reference
from gammace_ref.testing.metrics import rel_err, to_float64
from gammace_ref.testing import regimes as RG

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")]

# the brief's γ (0, 1e-300, the limits) and the regimes' own
GAMMAS = (0.0, 1e-300, 1e-7, 0.1, 0.5, 0.8, 1.0 - 1e-9, 1.0)
REGIMES = [r.name for r in RG.regimes("float64")]


def as_dtype(values, dtype):
    """mpmath numbers rounded to ``dtype`` (overflowing to ±inf there, as the computation must)."""
    with np.errstate(over="ignore"):
        return to_float64(values).astype(dtype)


@functools.lru_cache(maxsize=None)
def ref(name, dtype, gamma, eps=0.0, with_grad=True):
    """``(d1 per row, d2 per row, dgrad rows or None)`` of a regime, rounded to float64."""
    regime = next(r for r in RG.regimes(dtype) if r.name == name)
    rows = RG.as_dtype_rows(regime, dtype)[1]
    out = [reference.gamma_derivatives(r, t, gamma, eps, with_grad=with_grad) for r, t in zip(rows, regime.targets)]
    return tuple(to_float64([o[i] for o in out]) if i < 2 or with_grad else None for i in range(3))


def regime_arrays(name, dtype):
    regime = next(r for r in RG.regimes(dtype) if r.name == name)
    return RG.as_dtype_rows(regime, dtype)[0], np.asarray(regime.targets)


def effective_gamma(gamma, dtype):
    # The core rounds γ (and 1 - γ, log γ, computed in double) to the compute dtype once: in float32,
    # 1e-300 is 0 there.  Compare with the reference at the γ the computation sees.
    return float(np.float32(gamma)) if dtype == "float32" and gamma < 1e-30 else gamma


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", REGIMES)
def test_core_dgamma_in_every_regime(name, dtype):
    z, y = regime_arrays(name, dtype)
    for gamma in GAMMAS:
        for eps in (0.0, 0.1):
            got = G.gamma_ce_dgamma(z, y, gamma, reduction="none", label_smoothing=eps)
            want = as_dtype(ref(name, dtype, effective_gamma(gamma, dtype), eps, with_grad=False)[0], dtype)
            err = rel_err(got, want, dtype)
            assert err <= RG.TOLERANCE[dtype], (name, gamma, eps, err, got, want)


def test_core_dgamma_limits_and_reductions():
    z, y = regime_arrays("moderate", "float64")
    q = 1.0 - np.exp(G.gamma_ce(z, y, 0.0, reduction="none") * -1.0)  # 1 - p
    np.testing.assert_allclose(G.gamma_ce_dgamma(z, y, 1.0, reduction="none"), -q * q / 2, rtol=1e-14)
    p = 1.0 - q
    np.testing.assert_allclose(G.gamma_ce_dgamma(z, y, 0.0, reduction="none"), -(q / p + np.log(p)), rtol=1e-14)
    per_row = G.gamma_ce_dgamma(z, y, 0.4, reduction="none")
    assert G.gamma_ce_dgamma(z, y, 0.4, reduction="sum") == pytest.approx(per_row.sum(), rel=1e-15)
    assert G.gamma_ce_dgamma(z, y, 0.4) == pytest.approx(per_row.mean(), rel=1e-15)
    y2 = y.copy()
    y2[0] = -100
    assert G.gamma_ce_dgamma(z, y2, 0.4, ignore_index=-100) == pytest.approx(per_row[1:].mean(), rel=1e-15)


@pytest.fixture(scope="module")
def jax():
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    jax.config.update("jax_enable_x64", True)
    return jax


@pytest.mark.parametrize("name", REGIMES)
def test_jax_gamma_derivatives(jax, name):
    # dL/dγ (grad), d²L/dγ² (hessian in γ) and d∇L/dγ (the mixed second derivative), per row
    import jax.numpy as jnp

    import gammace_ref.jax as GJ

    z, y = regime_arrays(name, "float64")
    zj, yj = jnp.asarray(z), jnp.asarray(y)
    per_row = lambda z, g: GJ.gamma_ce(z, yj, g, reduction="none")  # noqa: E731
    total = lambda z, g: jnp.sum(per_row(z, g))  # noqa: E731
    for gamma in GAMMAS:
        d1, d2, dgrad = ref(name, "float64", gamma)
        g = jnp.asarray(gamma)
        # (per row in forward mode: reverse mode over the rows would weigh the other rows' infinite limits
        # -- a masked target at γ = 0 -- by a zero cotangent)
        got1 = jax.jacfwd(per_row, argnums=1)(zj, g)
        got2 = jax.jacfwd(jax.jacfwd(per_row, argnums=1), argnums=1)(zj, g)
        mixed = jax.jacfwd(jax.grad(total, argnums=0), argnums=1)(zj, g)
        for got, want in ((got1, d1), (got2, d2), (mixed, dgrad)):
            finite = np.isfinite(want)  # (an infinite limit: a masked target at γ = 0, where L is infinite)
            err = rel_err(np.asarray(got)[finite], want[finite], "float64")
            assert err <= 1e-12, (name, gamma, err)


def test_jax_tailr_is_constant_in_gamma_and_threshold(jax):
    import jax.numpy as jnp

    import gammace_ref.jax as GJ

    z, y = regime_arrays("moderate", "float64")
    f = lambda z, g, b: GJ.tailr(jnp.asarray(z), jnp.asarray(y), g, b)  # noqa: E731
    assert jax.grad(f, argnums=(1, 2))(z, 0.3, 0.2) == (0.0, 0.0)
    assert jax.hessian(f, argnums=1)(z, 0.3, 0.2) == 0.0
    np.testing.assert_array_equal(jax.jacfwd(jax.grad(f), argnums=1)(z, 0.3, 0.2), 0.0)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed")


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("name", ["moderate", "p_to_1", "p_to_0", "huge_logits"])
def test_torch_gamma_tensor_gets_its_exact_gradient(torch, name, compiled):
    import gammace_ref.torch as GT

    z, y = regime_arrays(name, "float64")
    for gamma in (0.0, 1e-7, 0.5, 1.0 - 1e-9, 1.0):
        d1 = ref(name, "float64", gamma, with_grad=False)[0]
        g = torch.tensor(gamma, dtype=torch.float64, requires_grad=True)
        zt = torch.tensor(z, requires_grad=True)
        GT.gamma_ce(zt, torch.tensor(y), g, reduction="sum", compiled=compiled).backward()
        assert rel_err(g.grad.numpy(), d1.sum(), "float64") <= 1e-12
        np.testing.assert_allclose(zt.grad.numpy(), G.gamma_ce_grad(z, y, gamma, reduction="sum"), rtol=1e-14)
        if not np.all(np.isfinite(d1)):
            continue  # (dL/dγ overflows -- γ = 0, log p < -709 --: torch's product rule then gives inf·0 = NaN)
        d2 = torch.func.hessian(lambda g: GT.gamma_ce(torch.tensor(z), torch.tensor(y), g, reduction="sum",
                                                      compiled=compiled))(torch.tensor(gamma, dtype=torch.float64))
        assert rel_err(d2.numpy(), ref(name, "float64", gamma, with_grad=False)[1].sum(), "float64") <= 1e-12


def test_torch_tailr_gamma_and_threshold_get_zero(torch):
    import gammace_ref.torch as GT

    z, y = regime_arrays("moderate", "float64")
    g = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    GT.tailr(torch.tensor(z), torch.tensor(y), g, b).backward()
    assert g.grad == 0.0 and b.grad == 0.0


def test_torch_linear_refuses_a_followed_gamma(torch):
    import gammace_ref.torch as GT

    h, w, y = torch.randn(4, 3), torch.randn(5, 3, requires_grad=True), torch.tensor([0, 1, 2, 3])
    with pytest.raises(NotImplementedError, match="gradients with respect to gamma or threshold"):
        GT.linear_gamma_ce(h, w, y, torch.tensor(0.3, requires_grad=True))
    # the vocabulary-parallel functions too (refused before any collective: no process group needed)
    import gammace_ref.torch.distributed as GTD

    followed = torch.tensor(0.3, requires_grad=True)
    for call in (lambda: GTD.gamma_ce(h @ w.T, y, followed, offset=0, n_classes=5),
                 lambda: GTD.tailr(h @ w.T, y, 0.3, followed, offset=0, n_classes=5),
                 lambda: GTD.linear_gamma_ce(h, w, y, followed, offset=0, n_classes=5)):
        with pytest.raises(NotImplementedError, match="gradients with respect to gamma or threshold"):
            call()


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_learned_gamma_trains(framework, request):
    # γ = sigmoid(θ) by gradient descent on the γ-CE loss (which decreases in γ: dL/dγ ≤ 0): γ moves up at
    # every step, and each step's gradient is the closed form dL/dγ·σ'(θ).
    z, y = regime_arrays("moderate", "float64")
    theta, lr = -1.0, 2.0
    gammas = []
    for _ in range(4):
        gamma = 1.0 / (1.0 + np.exp(-theta))
        expected = float(G.gamma_ce_dgamma(z, y, gamma)) * gamma * (1.0 - gamma)
        if framework == "torch":
            torch = request.getfixturevalue("torch")
            import gammace_ref.torch as GT

            t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
            GT.gamma_ce(torch.tensor(z), torch.tensor(y), torch.sigmoid(t)).backward()
            got = float(t.grad)
        else:
            jax = request.getfixturevalue("jax")
            import gammace_ref.jax as GJ

            got = float(jax.grad(lambda t: GJ.gamma_ce(z, y, jax.nn.sigmoid(t)))(theta))
        assert got == pytest.approx(expected, rel=1e-13)
        theta -= lr * got
        gammas.append(gamma)
    assert all(b > a for a, b in zip(gammas, gammas[1:])), gammas
