"""Peers and defining relations, on every backend (float64).

* γ = 0 is cross-entropy: torch ``F.cross_entropy`` and optax
  ``softmax_cross_entropy_with_integer_labels`` (values and autodiff gradients).
* TaiLr's gradient is the γ-CE gradient with the weight ``w`` replaced by
  ``clip(w, b, 1)``, the smoothing term unweighted; ``b = 0`` gives it exactly.
* TaiLr at γ = 1, b = 0 is DFT token scaling ``sg(p)·(-log p)``.
* TaiLr equals the official criterion's formula (thu-coai/TaiLr,
  ``fairseq/criterions/tailr.py``) restated in NumPy.

Tolerances are relative, element-wise: 1e-13 for values, 1e-12 for
gradients (the peers compute in float64 with their own roundings).
"""

import numpy as np
import pytest

import gammace_ref as G
from gammace_ref.testing import regimes
from gammace_ref.testing.backends import Backend, BackendUnderTest

RNG = np.random.default_rng(7)
Z = RNG.normal(0.0, 3.0, size=(8, 7))
Y = np.array([0, 1, 2, 3, 1, 5, 6, 4])


def _log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_tailr_with_zero_threshold_has_the_gamma_ce_gradient(backend, eps):
    z = np.concatenate([Z, [[60.0, 0.0, 0.0, 1.0, -np.inf, 2.0, 3.0]]])
    y = np.append(Y, 0)
    f1 = backend.compile(lambda a, b, g: G.gamma_ce_grad(a, b, g, label_smoothing=eps))
    f2 = backend.compile(lambda a, b, g: G.tailr_grad(a, b, g, 0.0, label_smoothing=eps))
    zb, yb = backend.asarray(z), backend.asarray(y)
    for gamma in regimes.GAMMAS:  # traced under jax.jit: one compilation each
        np.testing.assert_allclose(backend.numpy(f2(zb, yb, gamma)), backend.numpy(f1(zb, yb, gamma)),
                                   rtol=4e-16, atol=0)


@pytest.mark.parametrize("gamma,b,eps", [(0.1, 0.3, 0.1), (0.8, 0.2, 0.1), (1e-7, 0.2, 0.0)])
def test_tailr_gradient_is_the_gamma_ce_gradient_reweighted(backend, gamma, b, eps):
    # The paper's settings. With ε the smoothing weight and grad_γce taken without smoothing,
    # grad_tailr = (1 - ε)·clip(w, b, 1)/w · grad_γce + ε(p - 1/C)  (the smoothing term unweighted).
    # Two extra rows make the threshold bind (p ~ 1e-17) and not bind (p -> 1).
    z = np.concatenate([Z, [[-40.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], [60.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]])
    y = np.append(Y, [0, 0])
    lp = _log_softmax(z)
    lp_y = lp[np.arange(len(y)), y]
    ratio = (G.tailr_weight(lp_y, gamma, b) / G.tailr_weight(lp_y, gamma, 0.0))[:, None]
    assert (ratio > 1e3).any() and (ratio == 1).any()
    smooth = eps * (np.exp(lp) - 1 / z.shape[1]) / len(y)  # mean reduction
    g_ce = backend.run(G.gamma_ce_grad, z, y, gamma)
    g_tl = backend.run(G.tailr_grad, z, y, gamma, b, label_smoothing=eps)
    # atol: where the two terms cancel on the target, rounding of terms of size ~1e-2.
    np.testing.assert_allclose(g_tl, (1 - eps) * ratio * g_ce + smooth, rtol=1e-12, atol=1e-16)


def test_tailr_gamma_one_is_dft(backend):
    # γ = 1, b = 0: weight w = p, loss sg(p)·(-log p) (DFT token scaling).
    loss, grad = backend.run(G.tailr_value_and_grad, Z, Y, 1.0, 0.0, reduction="none")
    lp = _log_softmax(Z)
    p = np.exp(lp[np.arange(len(Y)), Y])
    np.testing.assert_allclose(loss, -p * lp[np.arange(len(Y)), Y], rtol=1e-13)
    np.testing.assert_allclose(grad, p[:, None] * (np.exp(lp) - np.eye(7)[Y]), rtol=1e-12)


def test_tailr_matches_official_criterion_formula(backend):
    # fairseq/criterions/tailr.py restated: softmax().log(); w = exp(log p - log(γ + (1-γ)p))
    # clamped to [b, 1]; summed over non-pad tokens: (1-ε)·Σ w·nll + ε/C·Σ smooth.
    gamma, b, eps, pad = 0.1, 0.3, 0.1, 1
    lprobs = np.log(np.exp(Z) / np.exp(Z).sum(-1, keepdims=True))
    nll = -lprobs[np.arange(len(Y)), Y]
    keep = Y != pad
    p = np.exp(-nll)
    w = np.clip(np.exp(np.log(p) - np.log(gamma + (1 - gamma) * p)), b, 1.0)
    official = (1 - eps) * (w * nll * keep).sum() + eps / 7 * (-lprobs.sum(-1) * keep).sum()
    ours = backend.run(G.tailr, Z, Y, gamma, b, ignore_index=pad, label_smoothing=eps, reduction="sum")
    assert ours == pytest.approx(official, rel=1e-13)


def test_gamma_zero_is_torch_cross_entropy(backend):
    torch = pytest.importorskip("torch", reason="torch is not installed: no F.cross_entropy to compare with")
    F = torch.nn.functional
    z = RNG.normal(0.0, 3.0, size=(4, 6, 3))  # (N, C, d1): torch's class axis 1
    y = RNG.integers(0, 6, size=(4, 3))
    y[0, 1] = -100
    for reduction in ("none", "sum", "mean"):
        for eps in (0.0, 0.2):
            zt = torch.tensor(z, requires_grad=True)
            ref = F.cross_entropy(zt, torch.tensor(y), reduction=reduction, label_smoothing=eps)
            ref.backward(torch.ones_like(ref))
            loss, grad = backend.run(G.gamma_ce_value_and_grad, z, y, 0.0, axis=1, reduction=reduction,
                                     ignore_index=-100, label_smoothing=eps)
            np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-13)
            np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_gamma_zero_is_optax_cross_entropy(backend):
    optax = pytest.importorskip("optax", reason="optax is not installed: no JAX cross-entropy to compare with")
    BackendUnderTest(Backend.JAX)  # usable here (else it raises), with float64 enabled in JAX
    import jax
    import jax.numpy as jnp

    zj, yj = jnp.asarray(Z), jnp.asarray(Y)
    ref_l = optax.softmax_cross_entropy_with_integer_labels(zj, yj)
    ref_g = jax.grad(lambda a: optax.softmax_cross_entropy_with_integer_labels(a, yj).sum())(zj)
    loss, grad = backend.run(G.gamma_ce_value_and_grad, Z, Y, 0.0, reduction="none")
    np.testing.assert_allclose(loss, np.asarray(ref_l), rtol=1e-13)
    np.testing.assert_allclose(grad, np.asarray(ref_g), rtol=1e-12, atol=1e-15)
