"""Every transformation a framework user reaches for, on the adapters and on the core's own functions.

* The core's functions under autodiff (a JAX tracer, a torch tensor that requires grad) carry the
  analytic derivatives: TaiLr's weight is held constant, a -inf target at γ = 0 has a finite gradient,
  the gradient a ``*_value_and_grad`` returns is itself differentiable (exact HVP), an ``*_hvp``
  refuses to be differentiated.  The log-p functions are differentiated by the framework (their
  derivative is ``-w``).
* MAML through ``gammace_ref.torch`` (issue 20 item 2): exact second order; the hidden-states path
  raises.
* The hidden-states path of ``gammace_ref.jax``: its first and second derivatives equal those of the
  logits path on ``hidden @ weight.T + bias``.
* Loss-only calls keep no logits-sized temporary (JAX: XLA's memory analysis).
"""

import numpy as np
import pytest

import gammace_ref as G

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")]

Z = np.array([[0.3, -1.2, 2.0, 0.7], [-np.inf, 0.0, 1.0, 2.0], [60.0, 0.0, 0.0, -1.0]])
Y = np.array([1, 0, 0])  # the second row's target is masked (-inf): p = 0
V = np.random.default_rng(3).normal(size=Z.shape)


@pytest.fixture(scope="module")
def jax():
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    jax.config.update("jax_enable_x64", True)
    return jax


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed")


# --------------------------------------------------------------------------- the core under autodiff


def test_core_functions_under_jax_grad(jax):
    import jax.numpy as jnp

    z, y, v = jnp.asarray(Z), jnp.asarray(Y), jnp.asarray(V)
    # TaiLr: the paper's gradient (W held constant), not the derivative of W·(-log p)
    np.testing.assert_allclose(jax.grad(lambda z: G.tailr(z, y, 0.3, 0.2))(z), G.tailr_grad(Z, Y, 0.3, 0.2),
                               rtol=1e-15, atol=1e-300)
    # γ = 0 with a -inf target logit: the loss is infinite, its gradient s - e finite
    g0 = jax.grad(lambda z: G.gamma_ce(z[:2], y[:2], 0.0))(z)
    assert np.all(np.isfinite(g0))
    np.testing.assert_allclose(g0[:2], G.gamma_ce_grad(Z[:2], Y[:2], 0.0), rtol=1e-15, atol=1e-300)
    # the gradient a *_value_and_grad returns differentiates exactly (the closed-form HVP), under jit too
    hv = jax.jit(lambda z: jax.jvp(lambda z: G.gamma_ce_value_and_grad(z, y, 0.3)[1], (z,), (v,))[1])(z)
    np.testing.assert_allclose(hv, G.gamma_ce_hvp(Z, Y, 0.3, V), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(jax.jvp(lambda z: G.tailr_grad(z, y, 0.3, 0.2), (z,), (v,))[1],
                               G.tailr_hvp(Z, Y, 0.3, 0.2, V), rtol=1e-14, atol=1e-300)
    # γ: dL/dγ and, differentiating gamma_ce_dgamma, d²L/dγ²
    assert jax.grad(lambda g: G.gamma_ce(z[:1], y[:1], g))(0.3) == pytest.approx(
        float(G.gamma_ce_dgamma(Z[:1], Y[:1], 0.3)), rel=1e-15)
    assert jax.grad(lambda g: G.gamma_ce_dgamma(z[:1], y[:1], g))(0.3) == pytest.approx(7.4950186957557285,
                                                                                          rel=1e-14)
    # an HVP is not differentiated (a third derivative); under jit alone it is the core's
    with pytest.raises(NotImplementedError, match="third and higher derivatives"):
        jax.grad(lambda z: G.gamma_ce_hvp(z, y, 0.3, v).sum())(z)
    np.testing.assert_allclose(jax.jit(lambda z: G.gamma_ce_hvp(z, y, 0.3, v))(z), G.gamma_ce_hvp(Z, Y, 0.3, V),
                               rtol=1e-14, atol=1e-300)


def test_core_functions_on_tensors_autograd_follows(torch):
    z, y, v = torch.tensor(Z, requires_grad=True), torch.tensor(Y), torch.tensor(V)
    G.tailr(z, y, 0.3, 0.2).backward()
    np.testing.assert_allclose(z.grad.numpy(), G.tailr_grad(Z, Y, 0.3, 0.2), rtol=1e-15, atol=1e-300)
    z2 = torch.tensor(Z[:2], requires_grad=True)
    G.gamma_ce(z2, y[:2], 0.0).backward()
    assert torch.isfinite(z2.grad).all()
    np.testing.assert_allclose(z2.grad.numpy(), G.gamma_ce_grad(Z[:2], Y[:2], 0.0), rtol=1e-15, atol=1e-300)
    z = torch.tensor(Z, requires_grad=True)
    _, grad = G.gamma_ce_value_and_grad(z, y, 0.3)
    (grad * v).sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), G.gamma_ce_hvp(Z, Y, 0.3, V), rtol=1e-14, atol=1e-300)
    g = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    G.gamma_ce(torch.tensor(Z[:1]), y[:1], g).backward()
    assert float(g.grad) == pytest.approx(float(G.gamma_ce_dgamma(Z[:1], Y[:1], 0.3)), rel=1e-15)
    g = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    G.gamma_ce_dgamma(torch.tensor(Z[:1]), y[:1], g).backward()
    assert float(g.grad) == pytest.approx(7.4950186957557285, rel=1e-14)
    z = torch.tensor(Z, requires_grad=True)
    with pytest.raises(NotImplementedError, match="third and higher derivatives"):
        G.gamma_ce_hvp(z, y, 0.3, v).sum().backward()
    # forward mode (torch.func.jvp): the exact tangent, not a silent 0
    tangent = torch.func.jvp(lambda z: G.gamma_ce(z, y[:1], 0.3, reduction="sum"), (torch.tensor(Z[:1]),),
                             (torch.tensor([[2.0, 1.0, 1.0, 1.0]]),))[1]
    assert float(tangent) == pytest.approx(0.010428363304792116, rel=1e-14)
    # nothing followed: the core runs as it is (a plain tensor out)
    assert not G.gamma_ce(torch.tensor(Z), y, 0.3).requires_grad


@pytest.mark.parametrize("gamma", [0.0, 1e-7, 0.5, 1.0])
def test_logp_functions_are_differentiated_by_the_framework(jax, torch, gamma):
    # elementwise formulas: the framework's derivative of gamma_ce_from_logp is -w (gamma_ce_dlogp) to ≤ 1e-14
    import jax.numpy as jnp

    lp = np.array([-1e-20, -1e-5, -0.5, -5.0, -800.0])
    want = G.gamma_ce_dlogp(lp, gamma)
    got_j = jax.vmap(jax.grad(lambda l: G.gamma_ce_from_logp(l, gamma)))(jnp.asarray(lp))
    t = torch.tensor(lp, requires_grad=True)
    G.gamma_ce_from_logp(t, gamma).sum().backward()
    for got in (np.asarray(got_j), t.grad.numpy()):
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-300)


# --------------------------------------------------------------------------- MAML


def test_maml_second_order_is_exact(torch):
    # issue 20 item 2: torch.autograd.grad(loss, params, create_graph=True) through GT.gamma_ce, a fast-weights
    # step, then .backward(): equal to the same pattern on a plain-torch γ-CE (true second order)
    import gammace_ref.torch as GT

    torch.manual_seed(0)
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 9, (16,))
    w0 = torch.randn(9, 6, dtype=torch.float64)

    def plain(z, y, gamma=0.3):
        p = torch.softmax(z, -1).gather(1, y[:, None])[:, 0]
        return (-torch.log(gamma + (1 - gamma) * p) / (1 - gamma)).mean()

    def outer_grad(loss_fn):
        w = w0.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss_fn(x @ w.T, y), w, create_graph=True)
        loss_fn(x @ (w - 0.5 * g).T, y).backward()
        return w.grad

    exact = outer_grad(plain)
    for compiled in (False, True):
        got = outer_grad(lambda z, y: GT.gamma_ce(z, y, 0.3, compiled=compiled))
        assert float((got - exact).norm() / exact.norm()) <= 1e-14


def test_maml_through_the_hidden_states_path_raises(torch):
    import gammace_ref.torch as GT

    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 5, (8,))
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    # issue 20's pattern: an inner step with create_graph=True, then the outer backward -- never silently
    # first-order
    (g,) = torch.autograd.grad(GT.linear_gamma_ce(x, w, y, 0.3), w, create_graph=True)
    exact = torch.autograd.grad(GT.gamma_ce(x @ w.T, y, 0.3), w)[0]
    assert torch.allclose(g, exact, rtol=1e-13, atol=0)  # the first derivative itself is right
    with pytest.raises(NotImplementedError, match="second derivatives .* not implemented on the hidden-states"):
        GT.linear_gamma_ce(x, w - 0.5 * g, y, 0.3).backward()
    for reduction in ("none", "sum"):
        (g,) = torch.autograd.grad(GT.linear_tailr(x, w, y, 0.3, 0.2, reduction=reduction).sum(), w,
                                   create_graph=True)
        with pytest.raises(NotImplementedError, match="hidden-states"):
            torch.autograd.grad((g * g).sum(), w)  # a gradient penalty
    # torch.func: first order works, forward mode over it raises
    first = torch.func.grad(lambda w: GT.linear_gamma_ce(x, w, y, 0.3))(w.detach())
    assert torch.allclose(first, exact, rtol=1e-13, atol=0)
    with pytest.raises(NotImplementedError, match="jvp"):  # (torch's own message: _Linear has no forward mode)
        torch.func.jvp(torch.func.grad(lambda w: GT.linear_gamma_ce(x, w, y, 0.3)), (w.detach(),),
                       (torch.ones_like(w),))


# --------------------------------------------------------------------------- JAX hidden states


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_jax_linear_derivatives_equal_the_logits_path(jax, reduction):
    import jax.numpy as jnp

    import gammace_ref.jax as GJ

    rng = np.random.default_rng(0)
    h, w, b = (jnp.asarray(rng.normal(size=s)) for s in ((7, 3), (5, 3), (5,)))
    y = jnp.asarray(rng.integers(0, 5, 7)).at[2].set(-100)
    kw = dict(reduction=reduction, ignore_index=-100, label_smoothing=0.1)

    def lin(h, w, b, g):
        return jnp.sum(GJ.linear_gamma_ce(h, w, y, g, bias=b, chunk_size=3, **kw))

    def logits(h, w, b, g):
        return jnp.sum(GJ.gamma_ce(h @ w.T + b, y, g, **kw))

    args = (h, w, b, 0.3)
    tol = dict(rtol=1e-12, atol=1e-15)
    for way in (jax.grad, jax.hessian, lambda f, argnums: jax.jit(jax.hessian(f, argnums=argnums))):
        for x, want in zip(jax.tree.leaves(way(lin, argnums=(0, 1, 2, 3))(*args)),
                           jax.tree.leaves(way(logits, argnums=(0, 1, 2, 3))(*args))):
            np.testing.assert_allclose(x, want, **tol)
    t = tuple(jnp.ones_like(a) for a in args[:3])
    np.testing.assert_allclose(jax.jvp(lambda *a: lin(*a, 0.3), args[:3], t)[1],
                               jax.jvp(lambda *a: logits(*a, 0.3), args[:3], t)[1], **tol)
    if reduction != "none":  # (grad of grad on the unreduced path: see docs/transformations.md)
        gg = [jax.grad(lambda h: jnp.sum(jax.grad(f, argnums=1)(h, w, b, 0.3) ** 2))(h) for f in (lin, logits)]
        np.testing.assert_allclose(*gg, **tol)


# --------------------------------------------------------------------------- loss-only calls


def test_jax_loss_only_program_keeps_no_logits_sized_temporary(jax):
    # XLA's memory analysis of the jitted loss-only program (a fixed property of the compiled program):
    # no N×C temporary, as optax's; value_and_grad still needs its gradient output only.
    import jax.numpy as jnp

    import gammace_ref.jax as GJ

    z, y = jnp.zeros((512, 4000), jnp.float32), jnp.zeros((512,), jnp.int32)
    for f in (lambda z, y: GJ.gamma_ce(z, y, 0.1), lambda z, y: GJ.tailr(z, y, 0.1, 0.2, ignore_index=-100)):
        temp = jax.jit(f).lower(z, y).compile().memory_analysis().temp_size_in_bytes
        assert temp < 0.05 * z.nbytes, temp / z.nbytes
