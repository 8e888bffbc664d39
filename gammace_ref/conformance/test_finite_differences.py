"""Gradients against high-order central differences of each backend's own loss (float64).

Richardson extrapolation of central differences (steps h, h/2, h/4, error
O(h⁶)) of the backend's own per-example ``gamma_ce`` values, scaled as the
reduction scales them (1 for a sum, 1/count for a mean, 0 for an ignored
target); compared element-wise with the backend's ``gamma_ce_grad`` at
relative 1e-8 (absolute 1e-11: the differences of a value near 1 carry
rounding ~eps/h). TaiLr's gradient is not the derivative
of its value (the weight is held constant): ``test_relations`` checks it.
"""

import numpy as np
import pytest

import gammace_ref as G

RNG = np.random.default_rng(11)
Z = RNG.normal(0.0, 2.0, size=(3, 5))
Y = np.array([4, 0, 2])


def _richardson_batch(z, h=1e-3):
    """Rows z_i ± s·e_j for every entry (i, j) and s in (h, h/2, h/4), and the map back.

    One call of the loss with ``reduction="none"`` on these rows gives every
    difference at once (a perturbation of row i changes only row i's loss).
    """
    steps = (h, h / 2, h / 4)
    rows, owner = [], []
    for i, j in np.ndindex(z.shape):
        for s in steps:
            for sign in (1.0, -1.0):
                r = z[i].copy()
                r[j] += sign * s
                rows.append(r)
                owner.append(i)
    return np.array(rows), np.array(owner), steps


def _extrapolate(losses, shape, steps):
    """Central differences from the batched losses, two Richardson steps (error O(h⁶))."""
    v = losses.reshape(*shape, len(steps), 2)
    d1, d2, d4 = ((v[..., k, 0] - v[..., k, 1]) / (2 * steps[k]) for k in range(3))
    r1, r2 = (4 * d2 - d1) / 3, (4 * d4 - d2) / 3
    return (16 * r2 - r1) / 15


@pytest.mark.parametrize("gamma", [0.0, 1e-7, 0.1, 0.8, 1.0])
@pytest.mark.parametrize("kw", [dict(reduction="mean", label_smoothing=0.1), dict(reduction="sum"),
                                dict(reduction="mean", ignore_index=0)], ids=["mean-ls", "sum", "ignore"])
def test_gamma_ce_grad_matches_finite_differences(backend, gamma, kw, record_property):
    y = np.where(np.arange(3) == 1, 0, Y) if "ignore_index" in kw else Y
    rows, owner, steps = _richardson_batch(Z)
    per_row = dict(kw, reduction="none")
    losses = backend.run(G.gamma_ce, rows, y[owner], gamma, **per_row)
    counted = (y != kw["ignore_index"]) if "ignore_index" in kw else np.ones(3, bool)
    scale = counted / (counted.sum() if kw["reduction"] == "mean" else 1.0)
    fd = _extrapolate(losses, Z.shape, steps) * scale[:, None]
    grad = backend.run(G.gamma_ce_grad, Z, y, gamma, **kw)
    record_property("worst_rel_err", float(np.max(np.abs(grad - fd) / np.maximum(np.abs(fd), 1e-3))))
    np.testing.assert_allclose(grad, fd, rtol=1e-8, atol=1e-11)
