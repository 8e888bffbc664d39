"""``where=``: a boolean mask of the targets' shape, as optax's; False entries count as ``ignore_index``."""

import numpy as np
import pytest

import gammace_ref as G

RNG = np.random.default_rng(11)
Z = RNG.normal(0.0, 2.0, size=(6, 5))
Y = np.array([0, 4, 2, 2, 1, 3])
WHERE = np.array([True, False, True, True, False, True])
Y_IGN = np.where(WHERE, Y, -100)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("which", ["gamma_ce", "tailr"])
def test_where_equals_ignore_index(backend, which, reduction):
    fn = getattr(G, f"{which}_value_and_grad")
    args = (0.3, 0.2) if which == "tailr" else (0.3,)
    kw = dict(reduction=reduction, label_smoothing=0.1)
    got = backend.call(lambda z, y, w: fn(z, y, *args, where=w, **kw), *map(backend.asarray, (Z, Y, WHERE)))
    ref = fn(Z, Y_IGN, *args, ignore_index=-100, **kw)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(backend.numpy(g), r, rtol=1e-13, atol=1e-300)


def test_where_and_ignore_index_combine():
    y = Y.copy()
    y[0] = -100
    loss = G.gamma_ce(Z, y, 0.3, ignore_index=-100, where=WHERE, reduction="none")
    assert np.count_nonzero(loss) == 3 and loss[0] == loss[1] == loss[4] == 0.0


def test_where_on_the_linear_path():
    h, w = RNG.normal(size=(6, 3)), RNG.normal(size=(5, 3))
    got = G.linear.tailr_value_and_grad(h, w, Y, 0.3, 0.2, where=WHERE, chunk_size=4)
    ref = G.linear.tailr_value_and_grad(h, w, Y_IGN, 0.3, 0.2, ignore_index=-100, chunk_size=4)
    for g, r in zip(got, ref):
        if r is not None:
            np.testing.assert_allclose(g, r, rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize(("where", "exc", "match"), [
    (WHERE[:3], ValueError, r"where shape \(3,\) does not match targets shape \(6,\)"),
    (WHERE.astype(int), TypeError, "where must have a boolean dtype, got int64"),
    ([True] * 6, TypeError, "where must be None or a boolean array, got list"),
])
def test_bad_where_is_named(where, exc, match):
    with pytest.raises(exc, match=match):
        G.gamma_ce(Z, Y, 0.3, where=where)
