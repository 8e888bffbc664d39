r"""Check a fused linear + γ-CE / TaiLr kernel (hidden states × lm_head weight) against mpmath.

>>> from gammace_ref.testing import check_linear_implementation
>>> report = check_linear_implementation(my_fused_loss, backend="torch", dtypes=("bfloat16",))  # doctest: +SKIP

``candidate(hidden, weight, targets, gamma[, threshold][, bias=...], **options)``
receives ``hidden`` ``(N, H)``, ``weight`` ``(C, H)`` (the logits are
``hidden @ weight.T + bias``), int64 targets ``(N,)`` and, with
``bias=True``, a ``(C,)`` bias by keyword; the options and the returned
losses are those of :func:`~gammace_ref.testing.check_implementation`
(per-example losses, or ``reduction``/``ignore_index``/``label_smoothing`` as
keyword arguments).  The gradients with respect to ``hidden``, ``weight``
(and ``bias``) come from the backend's autodiff or from
``grad(...) -> (d_hidden, d_weight[, d_bias])``.

**The reference.**  The logits are formed from the exact inputs in
double-double arithmetic (error-free products and a compensated sum: within
``2**-100`` of ``Σ_k |h_k W_ck|``, far below any tolerance) and go through
the mpmath reference; its logits gradient ``G``, rounded once to float64, is
chained with error-free products and compensated sums: ``d hidden = G·W``,
``d weight = Gᵀ·hidden``, ``d bias = Σ_rows G``, within ``2**-53`` of the
sum of the absolute products (1e-4 of the float64 tolerance).

**The judgement** (:mod:`gammace_ref.testing.judge`): the values element-wise
in the format returned; each gradient norm-wise per row of the result -- a
token's ``d hidden``, a class's ``d weight`` row, a class's ``d bias`` --
against the same product of magnitudes (``|G|·|W|``, ``|G|ᵀ·|hidden|``,
``Σ_rows |G|``; under ``profile="kernel"`` the magnitude includes the
one-hot term, see the judge).  Element-wise relative errors mean nothing
here: ``d hidden`` is a sum over the vocabulary of products of both signs
that can cancel to any size (the ``near_equal_rows`` case makes it cancel by
a factor of about a thousand), and no floating-point kernel can promise its
components relative to themselves.  What it can promise -- and what a dW off
by 2×, a missing mean scale or a bf16 accumulation across many chunks does
not meet -- is the error bound of a sum of products.

**The battery** (per dtype, every γ): ``random`` (N = 7, H = 33, C = 1003:
no multiple of a common block size), ``p_to_1`` (a target logit 64 above
the rest), ``p_to_0`` (a target logit near -800), ``ties`` (duplicated
weight rows), ``near_equal_rows`` (all weight rows within a small
perturbation of one vector: ``d hidden`` cancels), with ``ignore_index``
ignored rows and ``all_ignored``; with ``large=True`` also ``large_vocab``
(C = 128257, about a minute of mpmath).
"""

from __future__ import annotations

import functools
import time

import numpy as np

from . import regimes
from .formats import FORMATS, round_array
from .oracle import DTYPES, Case, Expected, Settings, run_battery, settings
from .report import Report
from .runner import Runner, jax_x64

__all__ = ["LARGE_VOCAB", "check_linear_implementation", "dd_matmul"]

LARGE_VOCAB = 128_257  # Llama-3's 128256 classes and one more: no multiple of any block size
SHAPE = (7, 33, 1003)  # N, H, C of the ordinary cases


# --------------------------------------------------------------------------- exact products


def _split(a):
    c = 134217729.0 * a  # 2**27 + 1 (Veltkamp)
    hi = c - (c - a)
    return hi, a - hi


def _two_prod(a, b):
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _dd_sum(x, axis=1):
    """Σ along ``axis`` of ``x`` as a double-double ``(hi, lo)``: a pairwise tree of error-free additions,
    the rounding errors summed on the side (error ≈ K·log K·eps²·Σ|x|)."""
    x = np.moveaxis(x, axis, 0)
    errs = np.zeros(x.shape[1:])
    while x.shape[0] > 1:
        if x.shape[0] % 2:
            x = np.concatenate([x, np.zeros((1,) + x.shape[1:])], axis=0)
        s, e = _two_sum(x[0::2], x[1::2])
        errs = errs + np.sum(e, axis=0)
        x = s
    s = x[0] if x.shape[0] else np.zeros(x.shape[1:])
    return _two_sum(s, errs)


def dd_matmul(a_hi, a_lo, b, block=1 << 22):
    """``(a_hi + a_lo) @ b`` as a double-double ``(hi, lo)`` (float64 arrays), ``b`` exact.

    Error-free products (Dekker) of ``a_hi`` and ``b``, ``a_lo·b`` rounded
    (it is ``2**-53`` smaller), summed by :func:`_dd_sum`: the result is within
    about ``2**-100·Σ_k |a_k b_k|`` of the exact product.  Computed in blocks of
    rows of ``a`` of about ``block`` products.
    """
    a_hi, a_lo, b = (np.asarray(v, dtype=np.float64) for v in (a_hi, a_lo, b))
    m, k = a_hi.shape
    p = b.shape[1]
    hi, lo = np.empty((m, p)), np.empty((m, p))
    rows = max(1, block // max(1, k * p))
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        for start in range(0, m, rows):
            sl = slice(start, start + rows)
            pr, er = _two_prod(a_hi[sl, :, None], b[None, :, :])
            terms = np.concatenate([pr, er, a_lo[sl, :, None] * b[None, :, :]], axis=1)
            hi[sl], lo[sl] = _dd_sum(terms, axis=1)
    return hi, lo


# --------------------------------------------------------------------------- cases


def _rng(seed, dtype, name):
    return np.random.default_rng([seed, list(FORMATS).index(dtype), sum(map(ord, name))])


def _base(dtype: str, seed: int, bias: bool, large: bool):
    """(name, hidden, weight, bias or None, targets) of every case, rounded to ``dtype``."""
    n, h, c = SHAPE
    shapes = [("random", (n, h, c)), ("p_to_1", (3, h, 257)), ("p_to_0", (3, h, 257)), ("ties", (5, h, 129)),
              ("near_equal_rows", (5, h, 511))]
    if large:
        shapes.append(("large_vocab", (3, 16, LARGE_VOCAB)))
    eps = FORMATS[dtype].eps
    for name, (n, h, c) in shapes:
        rng = _rng(seed, dtype, name)
        hid = rng.standard_normal((n, h))
        w = rng.standard_normal((c, h)) * (2.0 / np.sqrt(h))
        y = rng.integers(0, c, n)
        if name in ("p_to_1", "p_to_0"):
            w *= 0.05  # the other logits within a few units
            y = np.array([1, 2, 3])
            for i, t in enumerate(y):
                hid[i, i] = 8.0 if name == "p_to_1" else 100.0
                w[t, i] = 8.0 if name == "p_to_1" else -8.0  # target logit ≈ 64 / -800
        elif name == "ties":
            w[1::2] = w[0::2][: len(w[1::2])]  # class 2k+1 duplicates class 2k
            y = np.array([0, 1, 4, 5, 2])
        elif name == "near_equal_rows":
            v = rng.standard_normal(h)
            w = v + max(64 * eps, 1e-6) * rng.standard_normal((c, h))
            hid *= 0.1
        b = rng.standard_normal(c) if bias else None
        yield (name, round_array(hid, dtype), round_array(w, dtype),
               None if b is None else round_array(b, dtype), tuple(int(t) for t in y))


@functools.lru_cache(maxsize=16)
def linear_cases(dtype: str, seed: int, bias: bool, large: bool, ignore_index) -> tuple:
    out = []
    for name, hid, w, b, y in _base(dtype, seed, bias, large):
        if ignore_index is not None:
            src = [0, len(y) - 1] + list(range(1, len(y))) + [0]
            order = [0, -1] + list(range(1, len(y))) + [-2]
            hid = hid[src]
            y = tuple(ignore_index if o < 0 else y[o] for o in order)
        inputs = {"hidden": hid, "weight": w}
        if b is not None:
            inputs["bias"] = b
        out.append(Case(name, (name, dtype, seed, bias, large, ignore_index), inputs, y, ()))
    if ignore_index is not None:
        base = out[0]
        out.append(Case("all_ignored", ("all_ignored", dtype, seed, bias, large, ignore_index), base.inputs,
                        (ignore_index,) * base.n, ()))
    return tuple(out)


def _case(key) -> Case:
    name, dtype, seed, bias, large, ignore_index = key
    return next(c for c in linear_cases(dtype, seed, bias, large, ignore_index) if c.name == name)


@functools.lru_cache(maxsize=8)
def exact_logits(key) -> tuple:
    """The case's logits ``hidden @ weight.T + bias`` as a double-double ``(hi, lo)`` (float64 ``(N, C)``)."""
    case = _case(key)
    h, w = case.inputs["hidden"].astype(np.float64), case.inputs["weight"].astype(np.float64)
    if "bias" in case.inputs:  # the bias as one more term: a column of ones in hidden
        h = np.concatenate([h, np.ones((h.shape[0], 1))], axis=1)
        w = np.concatenate([w, case.inputs["bias"].astype(np.float64)[:, None]], axis=1)
    return dd_matmul(h, np.zeros_like(h), w.T)


@functools.lru_cache(maxsize=8)
def _mp_rows(key) -> list:
    """Rows of the exact logits ``hi + lo`` of case ``key`` as mpmath numbers (the sum is exact)."""
    from mpmath import libmp, mp

    hi, lo = exact_logits(key)
    add, conv = libmp.mpf_add, libmp.from_float
    return [tuple(mp.make_mpf(add(conv(a), conv(b), 256)) for a, b in zip(ra, rb)) for ra, rb in zip(hi.tolist(),
                                                                                                   lo.tolist())]


@functools.lru_cache(maxsize=None)
def _expected(key, gamma, s: Settings) -> Expected:
    from . import metrics, reference
    from .oracle import magnitudes

    case = _case(key)
    ignore_index = key[-1]
    rows = _mp_rows(key)
    loss, grad = reference.batch(rows, case.targets, gamma, threshold=s.threshold,
                                 label_smoothing=s.label_smoothing, reduction=s.reduction, ignore_index=ignore_index)
    # G rounded once to float64: its products with the exact W and h are formed error-free and summed
    # compensated, so the chained gradients are within 2**-53·Σ|G||W| -- 1e-4 of the float64 tolerance.
    g_hi = metrics.to_float64(grad)
    g_lo = np.zeros_like(g_hi)
    mag = magnitudes(rows, case.targets, gamma, s, ignore_index, onehot=s.profile == "kernel")
    h = case.inputs["hidden"].astype(np.float64)
    w = case.inputs["weight"].astype(np.float64)
    # The condition of forming the logits: logit (i, j) is a sum of products of size tz[i, j]; a kernel's
    # rounding of it moves the loss by Σ_j |G_ij|·Δz_ij and the softmax (hence G) relatively by max_j Δz_ij.
    tz = np.abs(h) @ np.abs(w).T + (np.abs(case.inputs["bias"].astype(np.float64)) if "bias" in case.inputs else 0.0)
    sens = np.abs(g_hi) * tz
    value = metrics.to_float64(loss)
    value_scale = np.abs(value) + (sens.sum(axis=1) if value.shape else sens.sum())
    cond = mag * (1.0 + 2.0 * tz.max(axis=1, initial=0.0))[:, None]
    grads = {
        "hidden": (dd_matmul(g_hi, g_lo, w)[0], cond @ np.abs(w), mag @ np.abs(w)),
        "weight": (dd_matmul(g_hi.T, g_lo.T, h)[0], cond.T @ np.abs(h), mag.T @ np.abs(h)),
    }
    if "bias" in case.inputs:
        ones = np.ones((1, g_hi.shape[0]))
        grads["bias"] = (dd_matmul(g_hi.T, g_lo.T, ones.T)[0][:, 0], cond.sum(axis=0), mag.sum(axis=0))
    return Expected(value, grads, value_scale, shown=True)


def _describe(case: Case, quantity, idx) -> dict:
    if not idx:
        return {"batch": f"{case.n} rows, targets {list(case.targets)}" if case.n <= 12 else f"{case.n} rows"}
    i = idx[0]
    shape = {k: v.shape for k, v in case.inputs.items()}
    out = {"shape": f"N={shape['hidden'][0]}, H={shape['hidden'][1]}, C={shape['weight'][0]}"}
    if quantity in ("value", "d_hidden"):
        out.update(row=i, target=int(case.targets[i]))
        if quantity == "d_hidden" and len(idx) > 1:
            out["component"] = idx[1]
    else:
        out["class"] = i
        if quantity == "d_weight" and len(idx) > 1:
            out["component"] = idx[1]
        out["rows with this target"] = [r for r, t in enumerate(case.targets) if t == i]
    return out


def check_linear_implementation(candidate, *, loss="gamma_ce", backend="numpy", grad=None, dtypes=DTYPES,
                                bias=False, gammas=regimes.GAMMAS, threshold=regimes.TAILR_THRESHOLD,
                                reduction=None, ignore_index=None, label_smoothing=None, profile="reference",
                                large=False, seed=0, timeout=None, static_gamma=None, cases=None) -> Report:
    """Run a fused linear + loss ``candidate`` over the battery and judge it; see the module docstring.

    The arguments are those of :func:`~gammace_ref.testing.check_implementation`,
    plus ``bias`` (pass a ``(C,)`` bias by keyword and check its gradient)
    and ``large`` (add the C = 128257 case); ``cases`` names a subset of
    ``random``, ``p_to_1``, ``p_to_0``, ``ties``, ``near_equal_rows``,
    ``large_vocab``, ``all_ignored``.
    """
    s = settings(loss, threshold, reduction, ignore_index, label_smoothing, profile, gammas, dtypes)
    start = time.perf_counter()
    from .backends import Backend

    family = Backend(backend).family
    with jax_x64(family == "jax"):
        runner = Runner(backend, candidate, grad=grad, positional=("hidden", "weight"),
                        keyword_arrays=("bias",) if bias else (),
                        scalars=("gamma", "threshold") if s.threshold is not None else ("gamma",),
                        options=s.keywords(), timeout=timeout, static_gamma=static_gamma)
        report = Report(loss=loss, backend=str(backend), grad_checked=runner.grad_checked, profile=profile,
                        kind="linear", options={**s.keywords(), **({"bias": True} if bias else {})})
        run_battery(report, runner, s, tuple(dtypes), tuple(gammas),
                    lambda d: linear_cases(d, seed, bool(bias), bool(large), s.ignore_index),
                    lambda case, g: _expected(case.key, g, s), lambda name: "row", _describe,
                    lambda case: {k: v.shape for k, v in case.inputs.items()}, only=cases)
    report.notes.extend(runner.notes)
    report.seconds = time.perf_counter() - start
    if family == "jax":
        report.compilations = runner.traces
    return report
