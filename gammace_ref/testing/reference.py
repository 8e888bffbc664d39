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


# --------------------------------------------------------------------------- second order and dL/dγ
#
# The Hessian from its closed form (∇²L = K (diag s - s sᵀ) - R (s - e)(s - e)ᵀ,
# K and R from the definitions of w and of its derivative in p; a test checks it
# against mpmath's numerical derivative of :func:`row`), and the γ-derivatives
# as mpmath's numerical derivatives of the loss and weight *definitions* in γ.
# As above, ``1 - p_y`` is taken from the other classes wherever it appears:
# (s - e)_y = -q, s_y (1 - s_y) = s_y q, (s - e)ᵀv = Σ_{j≠y} s_j v_j - q v_y.


def _extra_dps(p, q, gamma, dps):
    """Working digits for differences of L(γ) (~q, or ~|log u|) that change by ~q²·h/u around it."""
    with mp.workdps(dps):
        u = mpf(gamma) + (1 - mpf(gamma)) * p
        log_u = abs(mpmath.log(u)) if u > 0 else 0
        return dps + (2 * int(-mpmath.log10(q)) if 0 < q < 1 else 0) + int(mpmath.log10(log_u + 1)) + 20


def _curvature(p, q, gamma, threshold, eps):
    """``(K, R)``: the weights of ``diag s - s sᵀ`` and of ``-(s - e)(s - e)ᵀ`` in the row's Hessian."""
    g = mpf(gamma)
    c = 1 - g
    w = mpf(1) if g == 0 else p / (g + c * p)
    if threshold is not None:  # TaiLr: W held constant, no derivative of W
        return (1 - eps) * min(max(w, mpf(threshold)), mpf(1)) + eps, mpf(0)
    # dw/dz = (dw/dp)·p·(e - s) with dw/dp = γ/(γ + c p)²: R = (1 - ε)·w·γ/(γ + c p)
    a = mpf(0) if g == 0 else g / (g + c * p)
    return (1 - eps) * w + eps, (1 - eps) * w * a


def hessian_row(z, y, gamma, threshold=None, label_smoothing=0.0, dps=DPS):
    """The C×C Hessian (list of lists of mpmath numbers) of one row's loss with respect to ``z``.

    ``threshold=None`` is γ-CE; a number is TaiLr's surrogate with ``W`` held constant.
    """
    zs, s, q, _, _ = _softmax(tuple(z), y, dps)
    with mp.workdps(dps):
        K, R = _curvature(s[y], q, gamma, threshold, mpf(label_smoothing))
        se = list(s)
        se[y] = -q
        C = len(zs)
        H = [[-K * s[i] * s[j] - R * se[i] * se[j] for j in range(C)] for i in range(C)]
        m = max(range(C), key=lambda j: zs[j])
        for i in range(C):  # 1 - s_i from the other classes for the target and the top class
            rest = q if i == y else mpmath.fsum(s[:i] + s[i + 1:]) if i == m else 1 - s[i]
            H[i][i] = K * s[i] * rest - R * se[i] * se[i]
        return H


def hvp_row(z, y, v, gamma, threshold=None, label_smoothing=0.0, dps=DPS):
    """``∇²L·v`` (list of mpmath numbers) of one row, O(C): ``K·s⊙(v - sᵀv) - R·(s - e)·((s - e)ᵀv)``."""
    zs, s, q, _, _ = _softmax(tuple(z), y, dps)
    jv, t = _jv(tuple(z), y, tuple(v), dps)
    with mp.workdps(dps):
        K, R = _curvature(s[y], q, gamma, threshold, mpf(label_smoothing))
        out = [K * jv[j] - R * t * s[j] for j in range(len(zs))]
        out[y] = K * jv[y] + R * q * t
        return out


@functools.lru_cache(maxsize=64)
def _jv(z, y, v, dps):
    """``((diag s - s sᵀ)·v, (s - e)ᵀv)`` of one row: ``s_j·(v_j - sᵀv)`` with ``sᵀv - v_m`` summed relative
    to the top class ``m`` (whose ``1 - s_m`` is the others' mass), and ``sᵀv - v_y``."""
    zs, s, q, _, _ = _softmax(z, y, dps)
    with mp.workdps(dps):
        vs = [mpf(x) for x in v]
        m = max(range(len(zs)), key=lambda j: zs[j])
        sv = mpmath.fsum(s[j] * (vs[j] - vs[m]) for j in range(len(zs)) if j != m)  # sᵀv - v_m
        return [s[j] * ((vs[j] - vs[m]) - sv) for j in range(len(zs))], sv + vs[m] - vs[y]


def _loss_of_gamma(p, q):
    def f(g):
        c = 1 - g
        if c == 0:
            return q
        if abs(c * q) < mpf(1) / 2:
            return -mpmath.log1p(-c * q) / c
        return -mpmath.log(g + c * p) / c
    return f


def gamma_derivatives(z, y, gamma, label_smoothing=0.0, dps=DPS, with_grad=True):
    """``(dL/dγ, d²L/dγ², d∇L/dγ)`` of one γ-CE row (mpmath numbers; the last a list over the classes).

    Numerical derivatives (mpmath's ``diff``, one-sided towards γ + h with
    ``h`` far below ``γ + (1-γ)p``, at enough digits) of the definitions ``L(γ) = -log(γ + (1-γ)p)/(1-γ)`` (its
    limit ``1 - p`` at γ = 1) and ``w(γ) = p/(γ + (1-γ)p)``; ``d∇L/dγ`` is
    ``(1-ε)·dw/dγ·(s - e)``.  At a masked target (``p = 0``) and γ = 0 they
    are the infinite limits.  ``with_grad=False``: ``None`` for the last.
    """
    zs, s, q, _, _ = _softmax(tuple(z), y, dps)
    p, eps, g = s[y], mpf(label_smoothing), mpf(gamma)
    with mp.workdps(_extra_dps(p, q, g, dps)):
        if p == 0 and g == 0:
            d1, d2, dw = -mpmath.inf, mpmath.inf, -mpmath.inf
        else:
            # the step relative to u = γ + (1-γ)p, the scale on which L and w change with γ
            h = (g + (1 - g) * p) * mpmath.ldexp(1, -mp.prec - 10)
            f = _loss_of_gamma(p, q)
            d1 = mpmath.diff(f, g, 1, direction=1, h=h)
            d2 = mpmath.diff(f, g, 2, direction=1, h=h)
            dw = mpmath.diff(lambda x: p / (x + (1 - x) * p), g, 1, direction=1, h=h)
        dgrad = None
        if with_grad:
            se = list(s)
            se[y] = -q
            dgrad = [(1 - eps) * dw * v if v != 0 else mpf(0) for v in se]
        return (1 - eps) * d1, (1 - eps) * d2, dgrad
