"""Worked examples of the oracle on torch implementations.

The textbook formula (softmax, then the loss) is rejected: it loses
everything where ``1 - p`` is below machine epsilon and overflows at p -> 0.
A careful one (log-space, ``1 - p`` summed from the other classes, analytic
gradient) is accepted.
"""

import math

import pytest

from gammace_ref.testing import assert_matches_reference, check_implementation

torch = pytest.importorskip("torch", reason="torch is not installed: the torch worked examples need it")
F = torch.nn.functional


def naive_gamma_ce(logits, targets, gamma):
    """The textbook formula: p from softmax, then -log(γ + (1-γ)p)/(1-γ); torch autograd for the gradient."""
    p = F.softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
    if gamma == 1:
        return 1 - p
    return -torch.log(gamma + (1 - gamma) * p) / (1 - gamma)


class CarefulGammaCE(torch.autograd.Function):
    """Log-space value, ``1 - p`` from the other classes, analytic gradient ``w·(softmax - onehot)``."""

    @staticmethod
    def forward(ctx, logits, targets, gamma):
        zm = logits - logits.amax(-1, keepdim=True)
        onehot = F.one_hot(targets, logits.shape[-1]).bool()
        log_r = torch.logsumexp(zm.masked_fill(onehot, -math.inf), -1)  # log Σ_{j≠y} e^{z_j - m}
        d = zm.gather(-1, targets[:, None])[:, 0]
        log_s = torch.logaddexp(log_r, d)
        lp, q = d - log_s, torch.exp(log_r - log_s)  # log p and 1 - p, both without cancellation
        c = 1.0 - gamma
        if gamma == 0:
            loss, w = -lp, torch.ones_like(lp)
        elif gamma == 1:
            loss, w = q, torch.exp(lp)
        else:
            log_den = torch.logaddexp(torch.full_like(lp, math.log(gamma)), math.log(c) + lp)
            x = c * q  # may be subnormal (q ~ 1e-304): -log1p(-x)/c would lose digits, q·(1 + x/2) does not
            small = torch.where(x < 1e-8, q * (1 + x / 2), -torch.log1p(-x) / c)
            loss = torch.where(x <= 0.5, small, -log_den / c)
            w = torch.exp(lp - log_den)
        grad = torch.where(onehot, -(w * q)[:, None], w[:, None] * torch.exp(zm - log_s[:, None]))
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g[:, None], None, None


def test_worked_example_naive_torch_is_rejected_near_p_to_1():
    report = check_implementation(naive_gamma_ce, backend="torch")
    assert not report.passed and report.grad_checked
    failed = {e.case for e in report.failures}
    assert {"p_to_1", "p_to_0", "huge_logits"} <= failed
    p1 = next(e for e in report.failures if e.case == "p_to_1" and e.dtype == "float64")
    assert p1.value_rel == 1.0 and p1.worst["got"] == 0.0  # 1 - p below eps: the loss is lost entirely


def test_worked_example_careful_torch_is_accepted():
    report = assert_matches_reference(CarefulGammaCE.apply, backend="torch")
    assert report.grad_checked and len(report.entries) == 26


def test_torch_and_jax_adapters_pass_as_candidates():
    import gammace_ref.torch as gt

    assert_matches_reference(lambda z, y, g: gt.gamma_ce(z, y, g, reduction="none", compiled=False),
                             backend="torch")
    assert_matches_reference(lambda z, y, g, b: gt.tailr(z, y, g, b, reduction="none", compiled=False),
                             loss="tailr", backend="torch")
    pytest.importorskip("jax", reason="jax is not installed")
    import gammace_ref.jax as gj

    assert_matches_reference(lambda z, y, g: gj.gamma_ce(z, y, g, reduction="none"), backend="jax.jit",
                             dtypes=("float64",))
