"""A hypothesis fuzz of the core (NumPy) against 60-digit mpmath, with a fixed example count and seed.

Each example is a small batch in float32 or float64: logits over wide
ranges (up to ±1e38 / ±1e300), masked classes (``-inf``), ties, masked
targets; γ from {0, 1, subnormal, below float32's range, 1 - 1e-16, ...};
γ-CE or TaiLr (b = 0 included); every reduction; ``ignore_index`` rows that
hold anything (NaN, ±inf); label smoothing from 0 to tiny to 0.9.  The loss
and every gradient component must be within the documented bound:
relative 1e-12 (float64) / 2e-5 (float32), judged by absolute error below
the dtype's smallest normal number; with label smoothing a gradient
component is a difference of two terms and is bounded relative to the
larger one (docs/numerics.md).  ``derandomize=True``: the same examples on
every run and machine.
"""

import math

import mpmath
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gammace_ref as G
from gammace_ref.testing import metrics, reference, regimes

EXAMPLES = 400
TOL = regimes.TOLERANCE
IGNORE = -100
GAMMAS = [0.0, 1.0, 5e-324, 1e-310, 1e-300, 1e-46, 1e-7, 0.5, 1.0 - 1e-16, 1.0 - 1e-9]
SMOOTHINGS = [0.0, 0.0, 0.1, 0.9, 1e-6, 1e-300, 5e-324]
SCALES = {"float32": [1.0, 30.0, 300.0, 3e4, 1e38], "float64": [1.0, 30.0, 300.0, 3e4, 1e300]}


@st.composite
def batches(draw):
    dtype = draw(st.sampled_from(["float32", "float64"]))
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    rows, targets = [], []
    for _ in range(n):
        if draw(st.integers(0, 5)) == 0:  # an ignored row: anything at all
            huge = float(np.finfo(dtype).max)
            rows.append([draw(st.sampled_from([np.nan, np.inf, -np.inf, huge, -huge, 0.0])) for _ in range(c)])
            targets.append(IGNORE)
            continue
        scale = draw(st.sampled_from(SCALES[dtype]))
        row = [draw(st.floats(-1.0, 1.0)) * scale for _ in range(c)]
        for j in range(c):
            kind = draw(st.integers(0, 9))
            if kind == 0:
                row[j] = -np.inf  # a masked class
            elif kind == 1 and j:
                row[j] = row[draw(st.integers(0, j - 1))]  # a tie
        y = draw(st.integers(0, c - 1))
        if all(v == -np.inf for v in row):
            row[draw(st.integers(0, c - 1))] = 0.0  # a counted row needs a finite maximum
        rows.append(row)
        targets.append(y)
    z = np.array(rows, dtype=dtype)
    gamma = draw(st.one_of(st.sampled_from(GAMMAS), st.floats(0.0, 1.0)))
    threshold = draw(st.one_of(st.none(), st.sampled_from([0.0, 0.2, 1.0]), st.floats(0.0, 1.0)))
    eps = draw(st.one_of(st.sampled_from(SMOOTHINGS), st.floats(0.0, 0.99)))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return z, np.array(targets), gamma, threshold, eps, reduction


def _reference(z, y, gamma, threshold, eps, reduction):
    """mpmath's loss and gradient, with TaiLr's limit W·(-log p) -> 0 where W = 0 and p = 0 (see test_hardening).

    There the reference's ``0·inf`` is NaN; the row's loss is then only the
    smoothing term ``ε/C·Σ_j -log p_j``, which is γ-CE's at γ = 1 (``L = q = 1``
    for a masked target) less ``(1 - ε)·1``.
    """
    exact = z.astype(np.float64).tolist()
    with mpmath.workdps(reference.DPS):
        losses, grads = reference.batch(exact, y.tolist(), gamma, threshold, eps, "none", IGNORE)
        losses = [reference.row(row, t, 1.0, None, eps)[0] - (1 - mpmath.mpf(eps)) if mpmath.isnan(v) else v
                  for v, row, t in zip(losses, exact, y.tolist())]
        counted = sum(1 for t in y if t != IGNORE)
        if reduction == "none":
            return losses, grads
        scale = 1 if reduction == "sum" else mpmath.mpf(1) / max(counted, 1)
        return mpmath.fsum(losses) * scale, [[v * scale for v in g] for g in grads]


def _grad_err(got, ref, dtype, slack):
    """Worst error of ``got`` against ``ref`` relative to ``max(|ref| + slack, tiny)``."""
    tiny = float(np.finfo(dtype).tiny)
    r = metrics.to_float64(ref)
    g = got.astype(np.float64)
    same = (g == r) | ((np.abs(g) < tiny) & (np.abs(r) < tiny))
    err = np.abs(g - r) / np.maximum(np.abs(r) + slack, tiny)
    return float(np.where(same, 0.0, err).max(initial=0.0))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(batches())
def test_the_core_against_mpmath(example):
    z, y, gamma, threshold, eps, reduction = example
    dtype = str(z.dtype)
    kw = dict(reduction=reduction, ignore_index=IGNORE, label_smoothing=eps)
    with np.errstate(over="ignore"):  # NumPy warns when a logit difference overflows to -inf (p = 0)
        if threshold is None:
            loss, grad = G.gamma_ce_value_and_grad(z, y, gamma, **kw)
        else:
            loss, grad = G.tailr_value_and_grad(z, y, gamma, threshold, **kw)
    ref_l, ref_g = _reference(z, y, gamma, threshold, eps, reduction)
    assert loss.dtype == grad.dtype == z.dtype
    assert np.all(grad[y == IGNORE] == 0.0), "an ignored row's gradient must be exactly 0"
    assert metrics.rel_err(loss, ref_l, dtype) <= TOL[dtype], (loss, ref_l)
    # With smoothing, a component (k + ε)·p_j - ε/C is accurate relative to its larger term (≤ |ref| + 2ε·scale).
    scale = 1.0 if reduction != "mean" else 1.0 / max(1, int(np.sum(y != IGNORE)))
    slack = 2.0 * eps * scale
    err = _grad_err(grad, ref_g, dtype, slack)
    assert err <= TOL[dtype], (err, grad, ref_g)


def test_the_fuzz_draws_the_regimes_it_claims():
    # The strategy reaches every listed γ, smoothing, reduction and dtype, ties, -inf and ignored rows.
    seen = {"gamma": set(), "eps": set(), "reduction": set(), "dtype": set(), "masked": 0, "ignored": 0, "tailr": 0}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(batches())
    def collect(example):
        z, y, gamma, threshold, eps, reduction = example
        seen["gamma"].add(gamma)
        seen["eps"].add(eps)
        seen["reduction"].add(reduction)
        seen["dtype"].add(str(z.dtype))
        seen["masked"] += int(np.any(np.isneginf(z[y != IGNORE])))
        seen["ignored"] += int(np.any(y == IGNORE))
        seen["tailr"] += threshold is not None

    collect()
    assert set(GAMMAS) <= seen["gamma"] and set(SMOOTHINGS) <= seen["eps"]
    assert seen["reduction"] == {"none", "mean", "sum"} and seen["dtype"] == {"float32", "float64"}
    assert min(seen["masked"], seen["ignored"], seen["tailr"]) > EXAMPLES // 10
    assert math.isfinite(sum(seen["gamma"]))
