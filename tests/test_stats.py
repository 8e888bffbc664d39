"""gammace_ref.stats: the NLL, mean weight and fraction clipped of a batch, on every backend and from hidden states."""

import numpy as np
import pytest

from gammace_ref import linear, stats

RNG = np.random.default_rng(21)
Z = RNG.normal(0.0, 2.0, size=(12, 9))
Y = RNG.integers(0, 9, 12)
Y[[2, 7]] = -100


def reference(z, y, gamma, threshold=None):
    keep = y != -100
    z, y = z[keep], y[keep]
    m = z.max(1, keepdims=True)
    logp = (z - m)[np.arange(len(y)), y] - np.log(np.exp(z - m).sum(1))
    p = np.exp(logp)
    w = p / (gamma + (1 - gamma) * p)
    weight = w if threshold is None else np.clip(w, threshold, 1.0)
    clipped = 0.0 if threshold is None else float(np.mean(w < threshold))
    return {"nll": float(-logp.mean()), "weight": float(weight.mean()), "clipped": clipped}


@pytest.mark.parametrize("threshold", [None, 0.35])
def test_loss_stats_on_every_backend(backend, threshold):
    y = backend.asarray(Y)
    st = backend.compile(lambda z: stats.loss_stats(z, y, 0.4, threshold, ignore_index=-100))(backend.asarray(Z))
    got = stats.Stats(*backend.numpy(tuple(st))).means()
    want = reference(Z, Y, 0.4, threshold)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-13, abs=1e-15), k
    assert float(backend.numpy(st.count)) == 10
    if threshold is not None:
        assert 0 < got["clipped"] < 1


def test_class_axis_where_and_gamma_zero():
    st = stats.loss_stats(np.moveaxis(Z[None], 2, 1), Y[None], axis=1, where=Y[None] != -100)
    m = st.means()
    assert m["weight"] == 1.0 and m["clipped"] == 0.0  # γ = 0: cross-entropy, every weight 1
    assert m["nll"] == pytest.approx(reference(Z, Y, 0.0)["nll"], rel=1e-14)


def test_sums_add_and_nothing_counted_is_zero():
    a = stats.loss_stats(Z[:6], Y[:6], 0.3, ignore_index=-100)
    b = stats.loss_stats(Z[6:], Y[6:], 0.3, ignore_index=-100)
    both = stats.loss_stats(Z, Y, 0.3, ignore_index=-100)
    for u, v in zip(a + b, both):
        assert float(u) == pytest.approx(float(v), rel=1e-14)
    none = stats.loss_stats(Z[:2], np.array([-100, -100]), 0.3, ignore_index=-100)
    assert none.means() == {"nll": 0.0, "weight": 0.0, "clipped": 0.0}


def test_bad_rows_raise_or_poison():
    z = Z.copy()
    z[3] = np.nan
    with pytest.raises(ValueError, match=r"row at index \(3,\) has maximum nan"):
        stats.loss_stats(z, np.where(Y < 0, 0, Y), 0.1)
    with pytest.raises(ValueError, match="gamma must be in"):
        stats.loss_stats(Z, Y, 2.0)
    jax = pytest.importorskip("jax")
    st = jax.jit(lambda zz: stats.loss_stats(zz, jax.numpy.asarray(np.where(Y < 0, 0, Y)), 0.1))(z)
    assert all(np.isnan(float(v)) for v in st)  # traced: NaN, never a plausible number


@pytest.mark.parametrize("budget", [None, linear.TEMPORARIES * 8 * 2 * 4], ids=["whole", "blocks"])
def test_hidden_states_return_the_same_stats(budget):
    h = RNG.normal(size=(12, 5))
    w = RNG.normal(size=(9, 5))
    out, st = linear.tailr_value_and_grad(h, w, Y, 0.4, 0.35, ignore_index=-100, chunk_size=4 if budget else None,
                                          memory_budget=budget, return_stats=True)
    ref = stats.loss_stats(h @ w.T, Y, 0.4, 0.35, ignore_index=-100)
    for u, v in zip(st, ref):
        assert float(u) == pytest.approx(float(v), rel=1e-13)
    loss, st2 = linear.gamma_ce(h, w, Y, 0.4, ignore_index=-100, return_stats=True)
    assert float(st2.clipped) == 0 and np.ndim(loss) == 0
    with pytest.raises(TypeError, match="return_stats must be a bool"):
        linear.gamma_ce(h, w, Y, 0.4, return_stats=1)
