r"""The mathematics of γ-cross-entropy and TaiLr, written once for the array API.

Notation, per row (the class axis moved last): logits ``z``, target ``y``,
``m = max z``, ``e_j = exp(z_j - m)``, ``R = Σ_{j≠y} e_j``, ``d = z_y - m ≤ 0``,
``s = R + e^d = Σ_j e_j ≥ 1``.  Then, with no cancellation anywhere:

* ``log s = log1p(R + expm1(d))`` (``R + expm1(d) ≥ 0``: when the target is the
  maximum it is ``R`` itself, otherwise ``R`` holds the maximum's ``1``);
* ``log p = d - log s`` and ``-log p = (-d) + log s``, a sum of two
  non-negative terms;
* ``q = 1 - p = R / s`` from the *other* classes' mass -- exact even when
  ``1 - p`` is far below machine epsilon, where ``1 - exp(log p)`` is 0.

With ``c = 1 - γ`` and ``x = c·q`` (so ``γ + c·p = 1 - x``):

* ``x ≤ 1/2``: ``L = q·ψ(x)``, ``ψ(x) = -log1p(-x)/x`` (series ``1 + x/2 + x²/3``
  below ``√eps``), which is also the continuous limit ``L = q = 1 - p`` at γ = 1;
* ``x > 1/2`` (so ``c > 1/2``): ``L = -logaddexp(log γ, log c + log p) / c``,
  accurate down to ``log p ≪ -700`` where ``p`` itself underflows;
* ``w = p/(γ + c·p) = exp(-logaddexp(log γ - log p, log c))``: exactly 1 at
  γ = 0, exactly ``p`` at γ = 1, ``0`` for a masked (``-inf``) target with γ > 0.

The gradient ``k·(softmax - onehot)`` (``k = w``, or the TaiLr weight
``clip(w, b, 1)`` held constant) is ``k·e_j/s`` off the target and ``-k·q`` on it:
one product per component, so each is relatively accurate.  Label smoothing ε
adds the uniform-target cross-entropy ``ε/C · Σ_j -log p_j`` and its gradient
``ε·(softmax - 1/C)``.

:func:`compute` goes in steps, each a function of its own so that other
drivers (``gammace_ref.linear``'s blocks) reuse them: per-row
:func:`statistics` (``m``, ``R``, ``z_y``, ``Σ(m - z)``), the γ :func:`terms`
(value and gradient factors per row), the :func:`reduce` -tion, and the
:func:`gradient` assembly.  How the rows × classes arrays are
touched (a mask, in place, or one slice of the classes) is the execution
plan's business (:mod:`gammace_ref._execution`); nothing here reads an array
value back to the host.
"""

from __future__ import annotations

import math
import struct
from typing import Any, NamedTuple

from . import _validation
from ._options import Options


def _log(v: float) -> float:
    return math.log(v) if v > 0.0 else -math.inf


def _xlog(xp, v):
    """log of a (traced) non-negative 0-d array, -inf at 0, without warnings."""
    pos = v > 0
    return xp.where(pos, xp.log(xp.where(pos, v, 1.0)), -math.inf)


def _rounded(v: float, bits: int) -> float:
    """``v`` (a Python float) rounded to the nearest float of ``bits`` bits: float32's for 32, itself for 64."""
    return struct.unpack("f", struct.pack("f", v))[0] if bits == 32 else v


def _log_split(xp, v, dtype):
    """``(hi, lo)``: ``log v`` (``v ≥ 0`` a Python float or a 0-d array) as the nearest value of ``dtype``, and the rest.

    ``lo`` is 0 at ``v = 0`` (``hi = -inf``).  ``log γ`` of a γ below float32's
    range is ~-700, where float32's spacing is 6e-5: ``hi`` alone would cost
    ``w`` a relative 3e-5 (item 8 of issue 16).
    """
    if isinstance(v, (int, float)):
        log_v = _log(v)
        hi = _rounded(log_v, xp.finfo(dtype).bits)
        return hi, (log_v - hi if v > 0.0 else 0.0)  # exact: hi is log_v's rounding
    log_v = _xlog(xp, v)
    hi = xp.astype(log_v, dtype)
    return hi, xp.where(v > 0, log_v - xp.astype(hi, log_v.dtype), 0.0)


def _sub_error(xp, a, b, diff):
    """The rounding error of ``diff = a - b`` (Knuth's TwoSum: ``a - b = diff + error`` exactly), 0 where ``diff`` is not finite."""
    fin = xp.isfinite(diff)
    a, b = xp.where(fin, a, 0.0), xp.where(fin, b, 0.0)
    diff = a - b
    bv = diff - a
    return (a - (diff - bv)) - (b + bv)


def gamma_terms(xp, lp, q, gamma, device, *, parts=None, with_log=False):
    """γ-CE value ``L`` and weight ``w`` from ``log p`` and ``q = 1 - p`` (and ``log w`` if ``with_log``).

    ``lp`` and ``q`` are arrays of one float dtype on ``device``; ``gamma`` a
    Python float in [0, 1] or a 0-d array (traced).  See the module docstring
    for the regimes.  ``parts = (d, log_s, d_err)``, where ``lp = d - log_s``
    and ``d + d_err`` is exact (the logits' difference before rounding):
    ``log γ - log p``, which decides ``w``, is then formed from them without
    rounding ``log p`` first -- it matters in float32 when γ is below
    float32's range (``log γ ≈ log p ≈ -700``, float32's spacing 6e-5 there).
    """
    dt = lp.dtype
    log_g, log_g_lo = _log_split(xp, gamma, dt)
    if isinstance(gamma, float):
        consts = (1.0 - gamma, log_g, log_g_lo, _log(1.0 - gamma), max(1.0 - gamma, 0.5))
    else:
        c = 1 - gamma
        consts = (c, log_g, log_g_lo, _xlog(xp, c), xp.clip(c, 0.5, None))
    # 0-d arrays of the compute dtype (computed in double, rounded once): every
    # operation below is then array-array, the form every library and
    # tracing compiler handles alike.
    c, log_g, log_g_lo, log_c, c_div = (xp.asarray(v, dtype=dt, device=device)
                                        if isinstance(v, float) else xp.astype(v, dt) for v in consts)
    eps = xp.finfo(dt).eps
    x = c * q
    small = x <= 0.5
    # ψ(x) = -log1p(-x)/x on [√eps, 1/2]; its series below √eps (error < eps/4).
    series = x < math.sqrt(eps)
    x_mid = xp.clip(x, math.sqrt(eps), 0.5)
    psi = xp.where(series, 1.0 + x * (0.5 + x / 3.0), -xp.log1p(-x_mid) / x_mid)
    big = -xp.logaddexp(log_g, log_c + lp) / c_div
    loss = xp.where(small, q * psi, big)
    # log w = -logaddexp(t, log c), t = log γ - log p: a masked target (log p = -inf)
    # gives t = inf, w = 0; γ = 0 gives w = 1, without forming -inf - -inf.
    if isinstance(gamma, float) and gamma == 0.0:
        log_w = xp.zeros_like(q)
    else:
        if parts is None:
            t = (log_g - lp) + log_g_lo
        else:
            d, log_s, d_err = parts
            t = ((log_g - d) + log_s) + (log_g_lo - d_err)
        log_w = -xp.logaddexp(t, log_c)
        if not isinstance(gamma, float):  # a traced γ of 0: t may be NaN (-inf - -inf); w = 1
            log_w = xp.where(gamma > 0, log_w, 0.0)
    w = xp.exp(log_w)
    return (loss, w, log_w) if with_log else (loss, w)


def weighted_nll(xp, k, log_k, nll):
    """TaiLr's ``W·(-log p)`` from ``W``, ``log W`` and ``-log p``.

    One product; where ``W`` is below the smallest normal number it has lost
    relative precision (float32 TaiLr with b = 0 and γ below ~1e-34), so
    ``exp(log W + log(-log p))`` instead.  A masked target (``-log p = inf``):
    ``inf`` where ``W > 0``, and 0 where ``W = 0`` (b = 0, γ > 0): the limit
    of ``p·(-log p)/(γ + (1-γ)p)`` as ``p -> 0``, not ``0·inf``.
    """
    small = k < xp.finfo(k.dtype).smallest_normal
    finite = xp.isfinite(nll)
    pos = finite & (nll > 0)
    via_log = xp.exp(log_k + xp.log(xp.where(pos, nll, 1.0)))
    tiny_w = xp.where(pos, via_log, xp.where(finite | (log_k == -math.inf), 0.0, nll))
    return xp.where(small, tiny_w, k * xp.where(small, 0.0, nll))


def targets(xp, y, opts: Options, n_classes: int, device):
    """``(valid, y_safe)``: the counted targets, and the targets with every other entry 0, shape ``(..., 1)``."""
    if opts.ignore_index is None:
        valid = xp.ones(y.shape, dtype=xp.bool, device=device)
    else:
        valid = y != opts.ignore_index
    if opts.where is not None:
        valid = valid & opts.where
    return valid, xp.where(valid & (y >= 0) & (y < n_classes), y, 0)[..., None]


class Rows(NamedTuple):
    """Per-row statistics, each of shape ``(..., 1)``.

    ``m`` the row maximum (NaN where it is not finite: ignored or poisoned
    rows, ``ok`` False, whose entries are all excluded -- NaN, not a number
    that could meet ``±inf`` logits in ``inf - inf`` and warn), ``R = Σ_{j≠y} exp(z_j - m)``,
    ``z_y`` the target logit and ``smooth = a·Σ_j (m - z_j)`` with
    ``a = SMOOTH_SCALE`` (``None`` without label smoothing).
    """

    m: Any
    R: Any
    z_y: Any
    smooth: Any
    ok: Any


class Terms(NamedTuple):
    """The γ terms of each row (shape ``(..., 1)``): its loss (unreduced) and what the gradient needs.

    The gradient of the row's loss is ``k1·e_j/s + ε·(e_j/s - 1/C)`` off the
    target and ``on`` on it (``k1 = (1 - ε)·k``, ``k`` the weight).
    """

    loss: Any
    k1: Any
    s: Any
    on: Any


#: Label smoothing's ``Σ_j (m - z_j)`` is summed as ``Σ_j (a·m - a·z_j)`` with
#: this ``a``: a power of two, so each term is ``a·(m - z_j)`` rounded once
#: (no cancellation), and the sum cannot overflow for any C ≤ 2**31 where
#: ``Σ_j (m - z_j)`` itself overflows at logits of ±1e38 (float32).
SMOOTH_SCALE = 2.0 ** -32


def smoothing_on(opts: Options) -> bool:
    """Label smoothing is part of the computation: ε is a non-zero number, or an array (traced)."""
    eps = opts.label_smoothing
    return not isinstance(eps, (int, float)) or eps != 0.0


def _smoothing(xp, opts: Options, dtype):
    """ε as the core uses it: a Python float, or a 0-d array of ``dtype``."""
    eps = opts.label_smoothing
    return eps if isinstance(eps, (int, float)) else xp.astype(eps, dtype)


def _smoothing_term(xp, smooth, eps, n_classes: int, dtype, device):
    """``ε/C·Σ_j (m - z_j)`` from ``smooth = a·Σ_j (m - z_j)`` (``a = SMOOTH_SCALE``): ``(smooth/C)·F``, ``F = ε/a``.

    ``smooth/C ≤ 2**-31·max``, so the product overflows only where the
    result does.  A tiny ε (``F`` below the smallest normal number, e.g.
    ε < 2.7e-48 in float32) takes ``exp(log(smooth/C) + log F)`` instead, with
    ``log F`` carried in two parts: no ``F`` rounded to 0 (a ``-inf`` logit
    keeps its ``+inf``; a finite term is not lost), no subnormal (which XLA
    flushes to 0).
    """
    tiny = xp.finfo(dtype).smallest_normal
    per_class = smooth / n_classes
    F = eps / SMOOTH_SCALE
    if isinstance(eps, (int, float)) and F >= tiny:
        return per_class * xp.asarray(F, dtype=dtype, device=device)
    hi, lo = _log_split(xp, F, dtype)
    pos = per_class > 0
    via_log = xp.where(pos, xp.exp((xp.log(xp.where(pos, per_class, 1.0)) + hi) + lo), 0.0)
    if isinstance(eps, (int, float)):
        return via_log
    return xp.where(F >= tiny, per_class * xp.astype(F, dtype), xp.where(eps > 0, via_log, 0.0))


def statistics(xp, z, m, ok, plan, smoothing: bool):
    """``(Rows, e)`` from logits ``z`` and their row maximum ``m`` (NaN where ``ok`` is False).

    ``e = exp(z - m)`` with the target entries 0 (and the whole row 0 where
    ``ok`` is False), kept for the gradient.
    """
    e = plan.exp_off_target(z, m)
    sums = [xp.sum(e, axis=-1, keepdims=True), plan.target_logit(z)]
    if smoothing:  # Σ_j -log p_j = Σ_j (m - z_j) + C·log s: non-negative terms only
        sums.append(plan.gap_sum(z, m, SMOOTH_SCALE))
    R, z_y, *smooth = plan.row_sums(sums)
    return Rows(m, R, z_y, smooth[0] if smooth else None, ok), e


def terms(xp, rows: Rows, opts: Options, n_classes: int, device) -> Terms:
    """The γ-CE (or TaiLr) loss of each row and its gradient factors, from the row statistics."""
    dt = rows.R.dtype
    eps_ls = _smoothing(xp, opts, dt)
    diff = rows.z_y - rows.m
    d = xp.where(rows.ok, diff, 0.0)
    d_err = xp.where(rows.ok, _sub_error(xp, rows.z_y, rows.m, diff), 0.0)
    log_s = xp.log1p(rows.R + xp.expm1(d))
    s = rows.R + xp.exp(d)
    q = rows.R / s
    loss, k, log_k = gamma_terms(xp, d - log_s, q, opts.gamma, device, parts=(d, log_s, d_err), with_log=True)
    if opts.tailr:
        b = opts.threshold
        k = xp.clip(k, b, 1.0)
        log_b = _log(b) if isinstance(b, float) else xp.astype(_xlog(xp, b), dt)
        loss = weighted_nll(xp, k, xp.clip(log_k, log_b, 0.0), log_s - d)
    if smoothing_on(opts):
        smooth = _smoothing_term(xp, rows.smooth, opts.label_smoothing, n_classes, dt, device)
        loss = (1.0 - eps_ls) * loss + smooth + eps_ls * log_s
    k1 = (1.0 - eps_ls) * k
    on = -k1 * q  # k·(p - 1) on the target, from q = 1 - p
    if smoothing_on(opts):
        on = on + eps_ls * (xp.exp(d) / s - 1.0 / n_classes)
    return Terms(loss, k1, s, on)


def reduce(xp, loss, valid, bad, opts: Options, dtype):
    """``(value, scale)``: the reduced value of the rows' ``loss`` and each row's weight in it.

    ``scale`` is 0 for ignored rows, 1/count for a mean (a mean over no
    counted row is 0, with a zero gradient), NaN for a poisoned row.
    """
    loss = xp.where(valid, loss[..., 0], 0.0)
    scale = xp.astype(valid, dtype)
    if opts.reduction == "mean":
        scale = scale / xp.clip(xp.sum(scale), 1.0, None)
    loss = xp.where(bad, xp.nan, loss)
    scale = xp.where(bad, xp.nan, scale)
    if opts.reduction != "none":
        loss = xp.sum(loss * scale) if opts.reduction == "mean" else xp.sum(loss)
    return loss, scale


def gradient(xp, e, t: Terms, scale, opts: Options, n_classes: int, plan):
    """The gradient ``scale·(k·(softmax - onehot) [+ ε·(softmax - 1/C)])`` from ``e`` (consumed).

    ``e`` is updated in place where the plan can, so at most two N×C float
    arrays live at once.  ``e`` may be one slice (block) of the classes, with
    ``plan`` locating the targets in it.
    """
    eps_ls = _smoothing(xp, opts, t.s.dtype)
    scale = scale[..., None]
    coef = (t.k1 + eps_ls) / t.s * scale  # k·e_j/s off the target
    grad = plan.scaled(e, coef, (eps_ls / n_classes) * scale if smoothing_on(opts) else None)
    return plan.with_targets(grad, t.on * scale)


def compute(xp, z, y, opts: Options, *, need_grad: bool, plan):
    """Loss (reduced as ``opts.reduction`` says) and gradient of validated inputs.

    ``z``: logits, float32/64, classes last; ``y``: targets in the index
    dtype; ``plan``: an execution plan of :mod:`gammace_ref._execution`.
    An invalid row (a counted target out of range, no finite maximum, a
    traced γ outside [0, 1]) raises ``ValueError`` where the plan may read
    values, and is made NaN where it may not.  Returns ``(loss, grad, bad)``:
    ``grad`` in the compute layout (``None`` unless ``need_grad``), ``bad`` the
    mask of the rows made NaN, for a caller that can read it later
    (:func:`explain`).
    """
    n_classes = plan.n_classes(z.shape[-1])
    _, bad, _, e, t, loss, scale = _prepared(xp, z, y, opts, plan)
    if not need_grad:
        return loss, None, bad
    return loss, gradient(xp, e, t, scale, opts, n_classes, plan), bad


def _prepared(xp, z, y, opts: Options, plan):
    """The steps before the gradient: ``(valid, bad, rows, e, terms, loss, scale)`` (for :func:`compute` and
    :func:`second_order`)."""
    n_classes = plan.n_classes(z.shape[-1])
    valid, y_safe = targets(xp, y, opts, n_classes, plan.device)
    m = plan.row_max(xp.max(z, axis=-1, keepdims=True))
    bad = _validation.bad_rows(xp, y, valid, m[..., 0], n_classes, opts)
    if plan.readable and _validation.read_any(xp, bad):
        _validation.raise_bad_rows(xp, y, valid, m[..., 0], n_classes)
    ok = xp.isfinite(m)  # False only for ignored (or poisoned) rows
    # Such a row may hold anything (NaN, +inf): all its entries are excluded like
    # a target entry, so its gradient is 0 (poisoned rows: NaN, from their scale).
    # An eager call that has none skips nothing (one read instead of an N×C pass).
    skip = ~ok if not plan.readable or _validation.read_any(xp, ~ok) is not False else None
    plan.locate(y_safe, z.shape[-1], skip=skip)
    rows, e = statistics(xp, z, xp.where(ok, m, xp.nan), ok, plan, smoothing_on(opts))
    t = terms(xp, rows, opts, n_classes, plan.device)
    loss, scale = reduce(xp, t.loss, valid, bad, opts, z.dtype)
    return valid, bad, rows, e, t, loss, scale


def explain(xp, z, y, opts: Options, plan) -> None:
    """Raise the ``ValueError`` that names the first row :func:`compute` marked bad."""
    n_classes = plan.n_classes(z.shape[-1])
    valid, _ = targets(xp, y, opts, n_classes, plan.device)
    m = plan.row_max(xp.max(z, axis=-1, keepdims=True))
    _validation.raise_bad_rows(xp, y, valid, m[..., 0], n_classes)


# --------------------------------------------------------------------------- second order and dL/dγ
#
# With s = softmax, e = onehot, u = γ + c·p = 1 - x (c = 1 - γ, x = c·q), the
# row loss L = -log(u)/c has
#
#   ∇L = w (s - e),   ∇²L = w (diag s - s sᵀ) - w·a (s - e)(s - e)ᵀ,   a = 1 - c·w = γ/u,
#
# (TaiLr holds W = clip(w, b, 1) constant: ∇²L = W (diag s - s sᵀ); label
# smoothing ε scales the main term by 1 - ε and adds ε (diag s - s sᵀ)), and in γ
#
#   ∂w/∂γ = -p·q/u²,   ∂L/∂γ = -(r + log u)/c²,   ∂²L/∂γ² = (r² - 2r - 2 log u)/c³,   r = x/u,
#
# whose numerators cancel for small x: there they are the power series
# ∂L/∂γ = -q² Σ_k (k+1)/(k+2) x^k and ∂²L/∂γ² = q³ Σ_k (k+1)(k+2)/(k+3) x^k,
# which are also the limits at γ = 1 (x = 0).  A Hessian-vector product
# needs only t = (s - e)ᵀv = Σ_{j≠y} s_j (v_j - v_y) per row: O(N·C), no C×C.

#: Below this x = (1-γ)(1-p) the γ-derivatives take their power series (error < eps).
SERIES_X = 0.25
_S1 = tuple((k + 1) / (k + 2) for k in range(34))
_S2 = tuple((k + 1) * (k + 2) / (k + 3) for k in range(34))


def _horner(x, coefs):
    acc = x * coefs[-1] + coefs[-2]
    for c in reversed(coefs[:-2]):
        acc = acc * x + c
    return acc


def _exp(xp, arg, log_max):
    """``exp(arg)``, ``inf`` above ``log_max`` (the dtype's overflow), without an overflow warning."""
    return xp.where(arg > log_max, xp.inf, xp.exp(xp.clip(arg, None, log_max)))


def gamma_slopes(xp, lp, q, gamma, device):
    """``(a, 1 - a, dw, d1, d2, log u)`` of each γ-CE row from ``log p`` and ``q = 1 - p`` (see the comment above).

    ``a = γ/(γ + (1-γ)p)`` (the Hessian's rank-one factor ``1 - (1-γ)w``) and
    ``1 - a = (1-γ)p/(γ + (1-γ)p)``, each without cancellation,
    ``dw = ∂w/∂γ``, ``d1 = ∂L/∂γ``, ``d2 = ∂²L/∂γ²``; ``gamma`` as in
    :func:`gamma_terms`.  ``u = γ + (1-γ)p`` is ``1 - x`` for ``x ≤ 1/2`` and
    ``logaddexp(log γ, log c + log p)`` in logs beyond, so no factor
    cancels; where ``u`` underflows (γ = 0, ``p → 0``) ``d1``, ``d2`` and ``dw``
    are their infinite limits.  Large results are formed in logs: nothing
    overflows on the way to a finite one.
    """
    if isinstance(gamma, float):
        consts = (gamma, 1.0 - gamma, _log(gamma), _log(1.0 - gamma))
    else:
        consts = (gamma, 1 - gamma, _xlog(xp, gamma), _xlog(xp, 1 - gamma))
    g, c, log_g, log_c = (xp.asarray(v, dtype=lp.dtype, device=device)
                          if isinstance(v, float) else xp.astype(v, lp.dtype) for v in consts)
    fmax = xp.finfo(lp.dtype).max
    log_max = math.log(float(fmax)) * (1.0 - 4.0 * float(xp.finfo(lp.dtype).eps))  # exp() of it is finite
    lp_far = xp.clip(lp, -fmax, None)
    x = c * q
    near = x <= 0.5
    x_near = xp.where(near, x, 0.5)
    inv_near = 1.0 / (1.0 - x_near)
    log_u = xp.where(near, xp.log1p(-x_near), xp.logaddexp(log_g, log_c + lp_far))
    a = xp.where(near, g * inv_near, xp.exp(log_g - log_u))
    a_c = xp.where(near, c * xp.exp(lp) * inv_near, xp.exp((log_c + lp_far) - log_u))  # 1 - a
    log_u_exact = log_u
    log_u = xp.clip(log_u, -4.0 * log_max, None)  # below it u is 0 to any precision: the results are infinite
    dw = -q * xp.where(near, xp.exp(lp) * inv_near * inv_near, _exp(xp, (lp_far - log_u) - log_u, log_max))
    r = x * xp.where(near, inv_near, _exp(xp, -log_u, log_max))  # x/u
    series = x < SERIES_X
    xs = xp.where(series, x, 0.0)
    c_d = xp.where(series, 1.0, c)  # ≥ 1/4 where used
    # beyond sqrt(max)/8 the closed forms are r/c² and r²/c³ to far below eps: in logs
    huge = r > math.sqrt(float(fmax)) / 8.0
    r_d = xp.where(huge, 1.0, r)
    log_rc = xp.log(xp.where(huge, r, 1.0)) - xp.log(c_d)
    d1 = xp.where(series, -(q * q) * _horner(xs, _S1),
                  xp.where(huge, -_exp(xp, log_rc - xp.log(c_d), log_max), -(r_d + log_u) / (c_d * c_d)))
    d2 = xp.where(series, (q * q * q) * _horner(xs, _S2),
                  xp.where(huge, _exp(xp, 2.0 * log_rc - xp.log(c_d), log_max),
                           (r_d * (r_d - 2.0) - 2.0 * log_u) / (c_d * c_d * c_d)))
    return a, a_c, dw, d1, d2, log_u_exact


class Second(NamedTuple):
    """What :func:`second_order` returns (``None`` where not asked for).

    ``loss`` reduced; ``grad`` its gradient (compute layout); ``dgamma`` =
    dL/dγ, reduced like ``loss``; ``hvp`` = ``∇²L·v + ∂(∇L)/∂γ·γ̇`` (the
    directional derivative of ``grad``); ``dgamma_dot`` = ``⟨∂(∇L)/∂γ, v⟩ +
    ∂²L/∂γ²·γ̇`` (that of ``dgamma``), reduced like ``loss``.
    """

    loss: Any
    grad: Any
    dgamma: Any
    hvp: Any
    dgamma_dot: Any


def second_order(xp, z, y, opts: Options, *, v=None, gamma_dot=None, need_grad=True, need_dgamma=False,
                 plan) -> Second:
    """Loss, gradient, dL/dγ and their derivatives along ``(v, γ̇)``, in one pass (a :class:`Second`).

    ``z``, ``y``, ``plan`` as in :func:`compute`; ``v``: a tangent of ``z``
    (its shape, compute layout) or ``None`` (zero); ``gamma_dot``: a tangent
    of γ (0-d, or one per target) or ``None`` (zero).  ``hvp`` and ``dgamma_dot`` come when
    either is given.  TaiLr holds its weight constant: its dL/dγ and every γ
    term are 0.  O(N·C) work and memory, never C×C.
    """
    n_classes = plan.n_classes(z.shape[-1])
    valid, bad, rows, e, t, loss, scale = _prepared(xp, z, y, opts, plan)
    dtype = z.dtype
    eps_ls = _smoothing(xp, opts, dtype)
    if gamma_dot is not None and getattr(gamma_dot, "ndim", 0):  # one γ̇ per target (a transposed product)
        gamma_dot = gamma_dot[..., None]
    d = xp.where(rows.ok, rows.z_y - rows.m, 0.0)
    q = rows.R / t.s
    gamma_part = not opts.tailr
    if gamma_part:
        log_s = xp.log1p(rows.R + xp.expm1(d))
        a, a_c, dw, d1, d2, log_u = gamma_slopes(xp, d - log_s, q, opts.gamma, plan.device)
    counted = valid[..., None]
    sc = scale[..., None]

    def per_row(f):  # f·scale, 0 on uncounted rows whatever f is there (inf included), NaN on poisoned ones
        return xp.where(counted, f, 0.0) * sc

    def reduced(f):
        return reduce(xp, f, valid, bad, opts, dtype)[0]

    dgamma = hvp = dgamma_dot = None
    if need_dgamma:
        dgamma = reduced((1.0 - eps_ls) * d1 if gamma_part else xp.zeros_like(q))
    if v is not None or gamma_dot is not None:
        # ∇²L·v = K·Jv - R·(s - e)·t (J = diag s - s sᵀ, t = (s - e)ᵀv) as (K - R)·Jv + R·(Jv - (s - e)t):
        # as γ → 1 (a → 1) K - R = (1-ε)w(1 - a) + ε is small and comes from 1 - a itself.
        K = per_row(t.k1 + eps_ls)
        KR, R = (per_row(t.k1 * a_c + eps_ls), per_row(t.k1 * a)) if gamma_part else (K, None)
        # ∂∇L/∂γ·γ̇ = (1-ε)·dw·γ̇·(s - e), formed in logs: dw·s_j = -q·p·s_j/u² is finite where dw
        # alone overflows (γ = 0, p → 0: dw = -q/p)
        G = None
        if gamma_part and gamma_dot is not None:
            log_q = xp.where(q > 0, xp.log(xp.where(q > 0, q, 1.0)), -math.inf)
            shift = log_q + (d - log_s) - log_s - 2.0 * log_u  # log(|dw|/S)
            G = xp.where(counted, sc * (1.0 - eps_ls), 0.0) * gamma_dot
            G_off = -G * plan.exp_off_target(z - rows.m, -shift)  # G·dw·s_j off the target (z - m first: exact)
            G_on = -q * (G * dw)  # -q·G·dw on it
        s_y = xp.exp(d) / t.s
        terms_g = []  # the rows of dgamma_dot
        if v is not None:
            # Relative to r, the v of the row's top class(es) -- the target's where it is one --:
            # τ = sᵀv - r sums s_k·(v_k - r), so Jv_j = s_j·(v_j - r - τ) keeps its accuracy as s_j → 1.
            top = e == 1.0
            v_y, v_top, n_top = plan.row_sums([plan.target_logit(v),
                                               xp.sum(xp.where(top, v, 0.0), axis=-1, keepdims=True),
                                               xp.sum(xp.astype(top, v.dtype), axis=-1, keepdims=True)])
            y_top = d == 0.0
            r = xp.where(y_top, v_y, v_top / xp.where(y_top, 1.0, n_top))
            diff = v - r
            (tau,) = plan.row_sums([xp.sum(e * diff, axis=-1, keepdims=True)])
            tau = (tau + xp.exp(d) * (v_y - r)) / t.s  # sᵀv - r
            tv = tau + (r - v_y)  # t = (s - e)ᵀv
            jv_y = s_y * ((v_y - r) - tau)  # Jv on the target
            if R is None:
                hvp = e * (diff - tau) * (K / t.s)
                on = K * jv_y
            else:
                hvp = e * ((diff - tau) * (KR / t.s) + (diff - (tau + tv)) * (R / t.s))
                # Jv_y = -p·t: where q ≤ p/2, |q·t| ≤ |Jv_y|/2 and nothing cancels in K·Jv_y + R·q·t (R ≤ K),
                # nor does a small coefficient multiply the small Jv_y on its own (a flush-to-zero unit
                # would lose that product).  (The choice does not depend on v: the product stays linear.)
                qt = q * tv
                on = xp.where(q <= 0.5 * s_y, K * jv_y + R * qt, KR * jv_y + R * (jv_y + qt))
            if G is not None:
                hvp = hvp + G_off
                on = on + G_on
            if gamma_part and need_dgamma:
                terms_g.append(dw * tv)
        else:
            hvp = G_off if G is not None else xp.zeros_like(e)
            on = G_on if G is not None else xp.zeros_like(q)
        hvp = plan.with_targets(hvp, on)
        if gamma_part and gamma_dot is not None:
            terms_g.append(d2 * gamma_dot)
        if need_dgamma:
            dd = (1.0 - eps_ls) * sum(terms_g[1:], terms_g[0]) if terms_g else xp.zeros_like(q)
            dgamma_dot = reduced(dd)
    grad = gradient(xp, e, t, scale, opts, n_classes, plan) if need_grad else None
    return Second(loss, grad, dgamma, hvp, dgamma_dot)


# --------------------------------------------------------------------------- blocks of the classes
# A row whose C logits do not fit at once is taken in blocks of its classes
# (gammace_ref.linear's vocabulary blocks, or the ranks of a vocabulary-parallel
# layer): each block gives its :class:`Partial` statistics, :func:`merge`
# combines them (an online log-sum-exp), :func:`finish` turns the whole row's
# into :class:`Rows` for :func:`terms`, and :func:`gradient` runs per block
# again, with a plan (``_execution.block``) that locates the targets in it.


class Partial(NamedTuple):
    """Row statistics over some of the classes (one block, or the blocks seen so far), shape ``(..., 1)``.

    ``top`` is their raw maximum: ``-inf`` where all are ``-inf``, and ``+inf``
    or NaN kept (the row stays poisoned through every merge); ``R``, ``z_y``
    (0 unless the target is among these classes) and ``smooth`` (``None``
    without label smoothing) are those of :class:`Rows`, taken relative to
    ``top`` (to 0 where ``top`` is not finite).
    """

    top: Any
    R: Any
    z_y: Any
    smooth: Any


def block(xp, z, plan, smoothing: bool, top=None) -> Partial:
    """The :class:`Partial` of one block ``z`` of the classes (``plan`` has located the targets in it).

    ``top``: the block's row maximum, if the caller has it already.
    """
    if top is None:
        top = xp.max(z, axis=-1, keepdims=True)
    ok = xp.isfinite(top)
    rows, _ = statistics(xp, z, xp.where(ok, top, 0.0), ok, plan, smoothing)
    return Partial(top, rows.R, rows.z_y, rows.smooth)


def rebase(xp, p: Partial, top, n: int):
    """``(R, z_y, smooth)`` of ``p`` (over ``n`` classes) taken relative to a row maximum ``top ≥ p.top``.

    ``R·exp(p.top - top)`` and ``smooth + a·n·(top - p.top)`` (``a = SMOOTH_SCALE``,
    as :func:`statistics` scales ``smooth``): products and sums of
    non-negative terms, relatively exact.  Where ``p`` or ``top`` is not finite
    ``R`` is 0 (no ``inf·0``); ``smooth`` is then ``inf`` (a ``-inf`` logit) or
    poisoned with the row.
    """
    ok = xp.isfinite(p.top) & xp.isfinite(top)
    m = xp.where(xp.isfinite(top), top, 0.0)
    mp = xp.where(xp.isfinite(p.top), p.top, 0.0)
    R = xp.where(ok, p.R, 0.0) * xp.exp(xp.where(ok, mp - m, -math.inf))
    smooth = None if p.smooth is None else p.smooth + n * xp.where(ok, SMOOTH_SCALE * (m - mp), 0.0)
    return R, p.z_y, smooth


def merge(xp, a: Partial, b: Partial, n_a, n_b) -> Partial:
    """The :class:`Partial` of two disjoint sets of classes (``n_a`` and ``n_b`` of them): online log-sum-exp.

    The target is in one of them at most, so ``z_y`` is a sum with an exact 0.
    """
    top = xp.maximum(a.top, b.top)
    ra, rb = rebase(xp, a, top, n_a), rebase(xp, b, top, n_b)
    return Partial(top, *(None if u is None else u + v for u, v in zip(ra, rb)))


def empty(xp, shape, dtype, device, smoothing: bool) -> Partial:
    """The :class:`Partial` of no classes (``top = -inf``): the neutral start of :func:`merge`."""
    zero = xp.zeros(shape, dtype=dtype, device=device)
    return Partial(xp.full(shape, -math.inf, dtype=dtype, device=device), zero, zero, zero if smoothing else None)


def finish(xp, p: Partial) -> Rows:
    """:class:`Rows` of a whole row from the :class:`Partial` over all its classes."""
    ok = xp.isfinite(p.top)
    return Rows(xp.where(ok, p.top, 0.0), p.R, p.z_y, p.smooth, ok)


# --------------------------------------------------------------------------- statistics for logging


class Stats(NamedTuple):
    """Sums over the counted targets of a batch, for logging (0-d arrays, never differentiated).

    ``count`` counted targets; ``nll`` the sum of ``-log p`` (the cross-entropy,
    comparable across γ); ``weight`` the sum of the weight the gradient gets
    (``w = p/(γ + (1-γ)p)``, or TaiLr's ``clip(w, b, 1)``); ``clipped`` the
    number of targets whose ``w`` is below TaiLr's ``b`` (0 for γ-CE).  Sums
    add across chunks, micro-batches and ranks; :meth:`means` divides.
    """

    count: Any
    nll: Any
    weight: Any
    clipped: Any

    def means(self) -> dict:
        """``{"nll", "weight", "clipped"}``: the mean NLL, mean weight, fraction clipped (Python floats; 0 if nothing counted)."""
        n = max(float(self.count), 1.0)
        return {"nll": float(self.nll) / n, "weight": float(self.weight) / n, "clipped": float(self.clipped) / n}

    def __add__(self, other):  # noqa: D105 -- sums of two batches (not tuple concatenation)
        return Stats(*(u + v for u, v in zip(self, other)))


def stats(xp, rows: Rows, valid, bad, opts: Options, device) -> Stats:
    """:class:`Stats` of the rows counted in ``valid`` (shape ``(...,)``), from their statistics.

    NaN where a counted row is ``bad`` (made NaN by the core), as the loss is.
    """
    d = xp.where(rows.ok, rows.z_y - rows.m, 0.0)
    log_s = xp.log1p(rows.R + xp.expm1(d))
    s = rows.R + xp.exp(d)
    _, w = gamma_terms(xp, d - log_s, rows.R / s, opts.gamma, device)
    k, clipped = w, xp.zeros_like(w)
    if opts.tailr:
        k = xp.clip(w, opts.threshold, 1.0)
        clipped = xp.astype(w < opts.threshold, w.dtype)
    v, poison = valid[..., None], xp.any(bad)
    total = [xp.sum(xp.where(v, a, 0.0)) for a in (xp.astype(v, w.dtype), log_s - d, k, clipped)]
    return Stats(*(xp.where(poison, xp.nan, a) for a in total))
