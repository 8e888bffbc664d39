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
from typing import Any, NamedTuple

from . import _validation
from ._options import Options


def _log(v: float) -> float:
    return math.log(v) if v > 0.0 else -math.inf


def _xlog(xp, v):
    """log of a (traced) non-negative 0-d array, -inf at 0, without warnings."""
    pos = v > 0
    return xp.where(pos, xp.log(xp.where(pos, v, 1.0)), -math.inf)


def gamma_terms(xp, lp, q, gamma, device):
    """γ-CE value ``L`` and weight ``w`` from ``log p`` and ``q = 1 - p``.

    ``lp`` and ``q`` are arrays of one float dtype on ``device``; ``gamma`` a
    Python float in [0, 1] or a 0-d array (traced).  See the module docstring
    for the regimes.
    """
    if isinstance(gamma, float):
        consts = (1.0 - gamma, _log(gamma), _log(1.0 - gamma), max(1.0 - gamma, 0.5))
    else:
        c = 1 - gamma
        consts = (c, _xlog(xp, gamma), _xlog(xp, c), xp.clip(c, 0.5, None))
    # 0-d arrays of the compute dtype (computed in double, rounded once): every
    # operation below is then array-array, the form every library and
    # tracing compiler handles alike.
    c, log_g, log_c, c_div = (xp.asarray(v, dtype=lp.dtype, device=device)
                              if isinstance(v, float) else xp.astype(v, lp.dtype) for v in consts)
    eps = xp.finfo(lp.dtype).eps
    x = c * q
    small = x <= 0.5
    # ψ(x) = -log1p(-x)/x on [√eps, 1/2]; its series below √eps (error < eps/4).
    series = x < math.sqrt(eps)
    x_mid = xp.clip(x, math.sqrt(eps), 0.5)
    psi = xp.where(series, 1.0 + x * (0.5 + x / 3.0), -xp.log1p(-x_mid) / x_mid)
    lp_far = xp.clip(lp, -xp.finfo(lp.dtype).max, None)  # keeps -inf - -inf out of w
    big = -xp.logaddexp(log_g, log_c + lp) / c_div
    loss = xp.where(small, q * psi, big)
    w = xp.exp(-xp.logaddexp(log_g - lp_far, log_c))
    return loss, w


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

    ``m`` the row maximum (0 where it is not finite: ignored or poisoned
    rows, ``ok`` False), ``R = Σ_{j≠y} exp(z_j - m)``, ``z_y`` the target
    logit and ``smooth = Σ_j (m - z_j)`` (``None`` without label smoothing).
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


def statistics(xp, z, m, ok, plan, smoothing: bool):
    """``(Rows, e)`` from logits ``z`` and their row maximum ``m`` (0 where ``ok`` is False).

    ``e = exp(z - m)`` with the target entries 0, kept for the gradient.
    """
    e = plan.exp_off_target(z, m)
    sums = [xp.sum(e, axis=-1, keepdims=True), plan.target_logit(z)]
    if smoothing:  # Σ_j -log p_j = Σ_j (m - z_j) + C·log s: non-negative terms only
        sums.append(xp.sum(m - z, axis=-1, keepdims=True))
    R, z_y, *smooth = plan.row_sums(sums)
    return Rows(m, R, z_y, smooth[0] if smooth else None, ok), e


def terms(xp, rows: Rows, opts: Options, n_classes: int, device) -> Terms:
    """The γ-CE (or TaiLr) loss of each row and its gradient factors, from the row statistics."""
    eps_ls = opts.label_smoothing
    d = xp.where(rows.ok, rows.z_y - rows.m, 0.0)
    log_s = xp.log1p(rows.R + xp.expm1(d))
    s = rows.R + xp.exp(d)
    q = rows.R / s
    loss, k = gamma_terms(xp, d - log_s, q, opts.gamma, device)
    if opts.tailr:
        k = xp.clip(k, opts.threshold, 1.0)
        loss = k * (log_s - d)
    if eps_ls:
        loss = (1.0 - eps_ls) * loss + (eps_ls / n_classes) * (rows.smooth + n_classes * log_s)
    k1 = (1.0 - eps_ls) * k
    on = -k1 * q  # k·(p - 1) on the target, from q = 1 - p
    if eps_ls:
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
    eps_ls = opts.label_smoothing
    scale = scale[..., None]
    coef = (t.k1 + eps_ls) / t.s * scale  # k·e_j/s off the target
    grad = plan.scaled(e, coef, (eps_ls / n_classes) * scale if eps_ls else None)
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
    valid, y_safe = targets(xp, y, opts, n_classes, plan.device)
    plan.locate(y_safe, z.shape[-1])
    m = plan.row_max(xp.max(z, axis=-1, keepdims=True))
    bad = _validation.bad_rows(xp, y, valid, m[..., 0], n_classes, opts)
    if plan.readable and _validation.read_any(xp, bad):
        _validation.raise_bad_rows(xp, y, valid, m[..., 0], n_classes)
    ok = xp.isfinite(m)  # False only for ignored (or poisoned) rows
    rows, e = statistics(xp, z, xp.where(ok, m, 0.0), ok, plan, bool(opts.label_smoothing))
    t = terms(xp, rows, opts, n_classes, plan.device)
    loss, scale = reduce(xp, t.loss, valid, bad, opts, z.dtype)
    if not need_grad:
        return loss, None, bad
    return loss, gradient(xp, e, t, scale, opts, n_classes, plan), bad


def explain(xp, z, y, opts: Options, plan) -> None:
    """Raise the ``ValueError`` that names the first row :func:`compute` marked bad."""
    n_classes = plan.n_classes(z.shape[-1])
    valid, _ = targets(xp, y, opts, n_classes, plan.device)
    m = plan.row_max(xp.max(z, axis=-1, keepdims=True))
    _validation.raise_bad_rows(xp, y, valid, m[..., 0], n_classes)
