"""Every backend against every other: values and gradients, every reduction, ignore_index,
label smoothing and class axis, in float32 and float64.

The same inputs (random logits plus a p -> 1 row and a row with -inf
logits) go through each backend; every pair of backends must agree to
within twice the accuracy each is held to against mpmath
(``2 × regimes.TOLERANCE[dtype]``: 2e-12 in float64, 4e-5 in float32),
element-wise relative error (``metrics.rel_err``).
"""

import functools
import itertools

import numpy as np
import pytest

import gammace_ref as G
from gammace_ref.testing import metrics, regimes
from gammace_ref.testing.backends import Backend, BackendUnderTest, selected_dtypes, skip_reason

GAMMAS = (0.5, 1.0)  # every γ of the battery is in the golden vectors
CONFIGS = {  # name: (logits shape, class axis, reduction, ignore_index, label_smoothing)
    "mean": ((6, 9), -1, "mean", None, 0.0),
    "sum-ignore-ls": ((6, 9), -1, "sum", 3, 0.1),
    "none-axis1": ((3, 9, 2), 1, "none", 3, 0.0),
    "mean-axis0-ls": ((9, 6), 0, "mean", 3, 0.1),
}


def _inputs(shape, axis):
    rng = np.random.default_rng(abs(hash(shape)) % 2**32)
    z = rng.normal(0.0, 4.0, size=shape)
    y = rng.integers(0, shape[axis], size=tuple(n for i, n in enumerate(shape) if i != axis % len(shape)))
    zl = np.moveaxis(z, axis, -1)  # a view: edits land in z
    zl[(0,) * (zl.ndim - 1)][:] = 0.0
    zl[(0,) * (zl.ndim - 1)][0] = 60.0  # p -> 1 on target 0 ...
    y[(0,) * y.ndim] = 0
    zl[(1,) * (zl.ndim - 1)][1:4] = -np.inf  # ... and masked logits on another row
    return z, y


@functools.cache
def _results(kind):
    b = BackendUnderTest(kind)
    out = {}
    for dtype in selected_dtypes():
        for cname, (shape, axis, reduction, ignore, eps) in CONFIGS.items():
            z, y = _inputs(shape, axis)
            zb, yb = b.asarray(z.astype(dtype)), b.asarray(y)
            kw = dict(axis=axis, reduction=reduction, ignore_index=ignore, label_smoothing=eps)
            fns = {"gamma_ce": b.compile(lambda a, t, g: G.gamma_ce_value_and_grad(a, t, g, **kw)),
                   "tailr": b.compile(lambda a, t, g: G.tailr_value_and_grad(a, t, g, 0.3, **kw))}
            for fname, fn in fns.items():
                for g in GAMMAS:
                    loss, grad = fn(zb, yb, g)
                    out[(dtype, cname, fname, g)] = (b.numpy(loss), b.numpy(grad))
    return out


def _pair_id(pair):
    return f"{pair[0].value}-vs-{pair[1].value}"


@pytest.mark.parametrize("pair", list(itertools.combinations(list(Backend), 2)), ids=_pair_id)
def test_every_pair_of_backends_agrees(pair, record_property):
    for kind in pair:
        reason = skip_reason(kind)
        if reason:
            pytest.skip(reason)
    ra, rb = (_results(k) for k in pair)
    assert ra.keys() == rb.keys()
    worst = {}
    for key, (la, ga) in ra.items():
        lb, gb = rb[key]
        assert np.shape(la) == np.shape(lb) and np.shape(ga) == np.shape(gb), key
        dtype = key[0]
        err = max(metrics.rel_err(la, lb.astype(np.float64), dtype), metrics.rel_err(ga, gb.astype(np.float64), dtype))
        worst[key] = err
    assert worst  # compared something
    record_property("worst_rel_err", max(worst.values()))
    beyond = [f"{k}: relative difference {e:.3g}" for k, e in worst.items() if e > 2 * regimes.TOLERANCE[k[0]]]
    assert not beyond, "\n".join(beyond)
