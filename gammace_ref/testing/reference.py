"""Ground truth: γ-CE and TaiLr value and gradient with mpmath (60 digits).

Written independently of the array code, straight from the definitions, on
plain Python floats (converted exactly): ``p = softmax(z)``,
``L = -log(γ + (1-γ)p_y)/(1-γ)`` (``1 - p_y`` at γ = 1), ``w = p_y/(γ + (1-γ)p_y)``,
TaiLr weight ``clip(w, b, 1)``, label smoothing ``ε/C Σ_j -log p_j``.
The only care taken is to form ``1 - p_y`` from the other classes (so it
survives any working precision) and to use ``log1p`` where ``(1-γ)(1-p_y)`` is
tiny.
"""

from __future__ import annotations

import functools

import mpmath
from mpmath import mp, mpf

DPS = 60


@functools.lru_cache(maxsize=64)
def _softmax(z, y, dps):
    """Exact logits, softmax, ``q = 1 - p_y``, ``top = max z`` and ``log Σ_j exp(z_j - top)``.

    ``q`` is summed from the other classes and the log-sum uses
    ``log1p(R + expm1(z_y - top))``, so neither is absorbed by a 1 at any
    working precision; ``-log p_j`` is then ``(top - z_j) + log_sum``.
    """
    with mp.workdps(dps):
        zs = [mpf(v) for v in z]
        top = max(zs)
        ex = [mpmath.exp(v - top) for v in zs]
        R = mpmath.fsum(ex[:y] + ex[y + 1:])
        S = R + ex[y]
        log_sum = mpmath.log1p(R + mpmath.expm1(zs[y] - top))
        return zs, [v / S for v in ex], R / S, top, log_sum


def row(z, y, gamma, threshold=None, label_smoothing=0.0, dps=DPS):
    """Loss and gradient (list) of one row of logits ``z`` with target ``y``.

    ``threshold=None`` is γ-CE; a number is TaiLr with ``b = threshold``.
    Returns mpmath numbers.
    """
    zs, p, q, top, log_sum = _softmax(tuple(z), y, dps)
    C = len(zs)
    with mp.workdps(dps):
        nll = (top - zs[y]) + log_sum
        g, eps = mpf(gamma), mpf(label_smoothing)
        c = 1 - g
        if c == 0:
            loss = q
        elif c * q < mpf(1) / 2:
            loss = -mpmath.log1p(-c * q) / c
        else:
            loss = -mpmath.log(g + c * p[y]) / c
        w = mpf(1) if g == 0 else p[y] / (g + c * p[y])
        if threshold is not None:
            w = min(max(w, mpf(threshold)), mpf(1))
            loss = w * nll
        k = (1 - eps) * w
        if eps:
            loss = (1 - eps) * loss + eps / C * (mpmath.fsum(top - v for v in zs) + C * log_sum)
        if eps:
            grad = [(k + eps) * pj - eps / C for pj in p]
            grad[y] = -k * q + eps * (p[y] - mpf(1) / C)
        else:
            grad = [k * pj for pj in p]
            grad[y] = -k * q
        return loss, grad


def batch(rows, targets, gamma, threshold=None, label_smoothing=0.0, reduction="none", ignore_index=None):
    """Reference over a batch of rows (class axis last): (loss, grad rows).

    ``loss`` is a list for ``reduction="none"``, else one number; ignored rows
    give 0 and a zero gradient; a mean over no counted row is 0.
    """
    losses, grads = [], []
    for z, y in zip(rows, targets):
        if ignore_index is not None and y == ignore_index:
            losses.append(mpf(0))
            grads.append([mpf(0)] * len(z))
        else:
            lv, gv = row(z, y, gamma, threshold, label_smoothing)
            losses.append(lv)
            grads.append(gv)
    if reduction == "none":
        return losses, grads
    count = sum(1 for y in targets if ignore_index is None or y != ignore_index)
    total = mpmath.fsum(losses)
    if reduction == "sum":
        return total, grads
    n = max(count, 1)
    return total / n, [[v / n for v in gr] for gr in grads]
