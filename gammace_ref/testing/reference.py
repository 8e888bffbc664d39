"""Ground truth: γ-CE and TaiLr value and gradient with mpmath (60 digits).

Written independently of the array code, straight from the definitions, on
plain Python floats (converted exactly): ``p = softmax(z)``,
``L = -log(γ + (1-γ)p_y)/(1-γ)`` (``1 - p_y`` at γ = 1), ``w = p_y/(γ + (1-γ)p_y)``,
TaiLr weight ``clip(w, b, 1)``, label smoothing ``ε/C Σ_j -log p_j``.
The only care taken is to form ``1 - p_y`` from the other classes (so it
survives any working precision) and to use ``log1p`` where ``(1-γ)(1-p_y)`` is
tiny.

Thread-safe, and it leaves mpmath's global ``mp.dps`` alone: the work is done
in a private mpmath context per thread (:func:`context`), never under
``mp.workdps``.  The results are ordinary ``mpmath.mpf`` numbers of the
global context carrying the full 60-digit significand (arithmetic on them at
the caller's ``mp.dps`` rounds as usual; ``float(x)`` rounds once).
"""

from __future__ import annotations

import functools
import threading

import mpmath
from mpmath import libmp, mp

DPS = 60

_local = threading.local()


def context(dps: int = DPS) -> mpmath.MPContext:
    """This thread's private mpmath context, set to ``dps`` digits (the global ``mp`` is never touched)."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _local.ctx = mpmath.MPContext()
    ctx.dps = dps
    return ctx


def _raw(ctx, v):
    """The raw mpf tuple of ``v`` (a Python float, exactly, or an mpf of any context) at ``ctx``'s precision."""
    return ctx.convert(v)._mpf_


def _public(v):
    """A private-context number as a global-context ``mpmath.mpf`` with the same (unrounded) significand."""
    return mp.make_mpf(v._mpf_)


@functools.lru_cache(maxsize=64)
def _softmax_raw(z, y, dps):
    """Raw mpf tuples of :func:`_softmax` (shared between threads: no context object inside)."""
    ctx = context(dps)
    zs = [ctx.convert(v) for v in z]
    top = max(zs)
    ex = [ctx.exp(v - top) for v in zs]
    R = ctx.fsum(ex[:y] + ex[y + 1:])
    S = R + ex[y]
    log_sum = ctx.log1p(R + ctx.expm1(zs[y] - top))
    return (tuple(v._mpf_ for v in zs), tuple((v / S)._mpf_ for v in ex), (R / S)._mpf_, top._mpf_,
            log_sum._mpf_)


@functools.lru_cache(maxsize=64)
def _neg_log_sum(z, y, dps):
    """``Σ_j -log p_j = Σ_j (top - z_j) + C·log_sum`` (raw mpf; the label-smoothing term, γ-independent)."""
    ctx = context(dps)
    zs, _, _, top, log_sum = _softmax_in(ctx, z, y, dps)
    return (ctx.fsum(top - v for v in zs) + len(zs) * log_sum)._mpf_


def _softmax_in(ctx, z, y, dps):
    zs, p, q, top, log_sum = _softmax_raw(tuple(z), y, dps)
    mk = ctx.make_mpf
    return [mk(v) for v in zs], [mk(v) for v in p], mk(q), mk(top), mk(log_sum)


def _row_parts(ctx, z, y, dps):
    """``(raw softmax, p_y, q, top, log_sum, z_y)``: only the O(1) numbers as numbers of ``ctx``."""
    zs, p, q, top, log_sum = _softmax_raw(tuple(z), y, dps)
    mk = ctx.make_mpf
    return p, mk(p[y]), mk(q), mk(top), mk(log_sum), mk(zs[y])


def _scaled(ctx, factor, p, offset=None):
    """``[factor·p_j (+ offset)]`` over raw softmax values, as global-context numbers (one rounding per
    operation at ``ctx``'s precision, as ``factor * p_j + offset`` on mpmath numbers)."""
    prec, rnd, pub = ctx.prec, libmp.round_nearest, mp.make_mpf
    f = factor._mpf_
    if offset is None:
        return [pub(libmp.mpf_mul(f, pj, prec, rnd)) for pj in p]
    o = offset._mpf_
    return [pub(libmp.mpf_add(libmp.mpf_mul(f, pj, prec, rnd), o, prec, rnd)) for pj in p]


def _softmax(z, y, dps):
    """Exact logits, softmax, ``q = 1 - p_y``, ``top = max z`` and ``log Σ_j exp(z_j - top)``.

    ``q`` is summed from the other classes and the log-sum uses
    ``log1p(R + expm1(z_y - top))``, so neither is absorbed by a 1 at any
    working precision; ``-log p_j`` is then ``(top - z_j) + log_sum``.
    ``z`` is a tuple of Python floats or mpmath numbers (taken at ``dps``
    digits).  Returns global-context mpmath numbers.
    """
    zs, p, q, top, log_sum = _softmax_raw(tuple(z), y, dps)
    mk = mp.make_mpf
    return [mk(v) for v in zs], [mk(v) for v in p], mk(q), mk(top), mk(log_sum)


def _weight(ctx, p_y, gamma, threshold):
    g = ctx.convert(gamma)
    w = ctx.mpf(1) if g == 0 else p_y / (g + (1 - g) * p_y)
    if threshold is not None:
        w = min(max(w, ctx.convert(threshold)), ctx.mpf(1))
    return w


def row(z, y, gamma, threshold=None, label_smoothing=0.0, dps=DPS):
    """Loss and gradient (list) of one row of logits ``z`` with target ``y``.

    ``threshold=None`` is γ-CE; a number is TaiLr with ``b = threshold``.
    ``z`` holds Python floats or mpmath numbers.  Returns mpmath numbers.
    """
    ctx = context(dps)
    p, p_y, q, top, log_sum, z_y = _row_parts(ctx, z, y, dps)
    C = len(p)
    nll = (top - z_y) + log_sum
    g, eps = ctx.convert(gamma), ctx.convert(label_smoothing)
    c = 1 - g
    if c == 0:
        loss = q
    elif c * q < ctx.mpf(1) / 2:
        loss = -ctx.log1p(-c * q) / c
    else:
        loss = -ctx.log(g + c * p_y) / c
    w = _weight(ctx, p_y, gamma, threshold)
    if threshold is not None:
        loss = w * nll
    k = (1 - eps) * w
    if eps:
        loss = (1 - eps) * loss + eps / C * ctx.make_mpf(_neg_log_sum(tuple(z), y, dps))
    if eps:  # (k + ε)·p_j - ε/C; the target's -k·q + ε(p_y - 1/C), 1 - p_y never formed
        grad = _scaled(ctx, k + eps, p, -(eps / C))
        grad[y] = _public(-k * q + eps * (p_y - ctx.mpf(1) / C))
    else:
        grad = _scaled(ctx, k, p)
        grad[y] = _public(-k * q)
    return _public(loss), grad


def magnitude(z, y, gamma, threshold=None, label_smoothing=0.0, onehot=True, dps=DPS):
    """The size of the terms whose difference is the gradient of :func:`row`, per class (mpmath list).

    The gradient is ``(k + ε)·softmax - k·onehot(y) - ε/C`` (``k = (1 - ε)·w``,
    ``w`` the γ-CE / TaiLr weight).  With ``onehot=True`` this returns
    ``(k + ε)·p_j + ε/C + k·[j = y]``: a kernel that forms ``p_y - 1`` in
    floating point carries an absolute error of about ``eps·k`` there whatever
    the size of ``1 - p_y`` (the oracle's ``kernel`` profile).  With
    ``onehot=False`` the target's terms are ``k·q`` (``q = 1 - p_y`` summed from
    the other classes), ``ε·p_y`` and ``ε/C``: the condition of each component
    when ``1 - p_y`` is not formed by subtraction; without smoothing this is
    ``|gradient|`` itself.
    """
    ctx = context(dps)
    p, p_y, q, _, _, _ = _row_parts(ctx, z, y, dps)
    C = len(p)
    eps = ctx.convert(label_smoothing)
    k = (1 - eps) * _weight(ctx, p_y, gamma, threshold)
    k_eps, share = k + eps, eps / C
    out = _scaled(ctx, k_eps, p, share)
    out[y] = _public(k + k_eps * p_y + share if onehot else k * q + eps * p_y + share)
    return out


def batch(rows, targets, gamma, threshold=None, label_smoothing=0.0, reduction="none", ignore_index=None):
    """Reference over a batch of rows (class axis last): (loss, grad rows).

    ``loss`` is a list for ``reduction="none"``, else one number; ignored rows
    give 0 and a zero gradient; a mean over no counted row is 0.
    """
    ctx = context(DPS)
    losses, grads = [], []
    for z, y in zip(rows, targets):
        if ignore_index is not None and y == ignore_index:
            losses.append(mp.make_mpf(ctx.mpf(0)._mpf_))
            grads.append([losses[-1]] * len(z))
        else:
            lv, gv = row(z, y, gamma, threshold, label_smoothing)
            losses.append(lv)
            grads.append(gv)
    if reduction == "none":
        return losses, grads
    ctx = context(DPS)
    count = sum(1 for y in targets if ignore_index is None or y != ignore_index)
    total = ctx.fsum(ctx.make_mpf(v._mpf_) for v in losses)
    if reduction == "sum":
        return _public(total), grads
    n = max(count, 1)
    inv = ctx.mpf(1) / n  # 60 digits: multiplying by it is exact to far below any float's precision
    return _public(total / n), [_scaled(ctx, inv, [v._mpf_ for v in gr]) for gr in grads]


# --------------------------------------------------------------------------- second order and dL/dγ
#
# The Hessian from its closed form (∇²L = K (diag s - s sᵀ) - R (s - e)(s - e)ᵀ,
# K and R from the definitions of w and of its derivative in p; a test checks it
# against mpmath's numerical derivative of :func:`row`), and the γ-derivatives
# as mpmath's numerical derivatives of the loss and weight *definitions* in γ.
# As above, ``1 - p_y`` is taken from the other classes wherever it appears:
# (s - e)_y = -q, s_y (1 - s_y) = s_y q, (s - e)ᵀv = Σ_{j≠y} s_j v_j - q v_y.


def _extra_dps(ctx, p, q, gamma, dps):
    """Working digits for differences of L(γ) (~q, or ~|log u|) that change by ~q²·h/u around it."""
    g = ctx.convert(gamma)
    u = g + (1 - g) * p
    log_u = abs(ctx.log(u)) if u > 0 else 0
    return dps + (2 * int(-ctx.log10(q)) if 0 < q < 1 else 0) + int(ctx.log10(log_u + 1)) + 20


def _curvature(ctx, p, gamma, threshold, eps):
    """``(K, R)``: the weights of ``diag s - s sᵀ`` and of ``-(s - e)(s - e)ᵀ`` in the row's Hessian."""
    g = ctx.convert(gamma)
    c = 1 - g
    w = ctx.mpf(1) if g == 0 else p / (g + c * p)
    if threshold is not None:  # TaiLr: W held constant, no derivative of W
        return (1 - eps) * min(max(w, ctx.convert(threshold)), ctx.mpf(1)) + eps, ctx.mpf(0)
    # dw/dz = (dw/dp)·p·(e - s) with dw/dp = γ/(γ + c p)²: R = (1 - ε)·w·γ/(γ + c p)
    a = ctx.mpf(0) if g == 0 else g / (g + c * p)
    return (1 - eps) * w + eps, (1 - eps) * w * a


def hessian_row(z, y, gamma, threshold=None, label_smoothing=0.0, dps=DPS):
    """The C×C Hessian (list of lists of mpmath numbers) of one row's loss with respect to ``z``.

    ``threshold=None`` is γ-CE; a number is TaiLr's surrogate with ``W`` held constant.
    """
    ctx = context(dps)
    zs, s, q, _, _ = _softmax_in(ctx, z, y, dps)
    K, R = _curvature(ctx, s[y], gamma, threshold, ctx.convert(label_smoothing))
    se = list(s)
    se[y] = -q
    C = len(zs)
    H = [[-K * s[i] * s[j] - R * se[i] * se[j] for j in range(C)] for i in range(C)]
    m = max(range(C), key=lambda j: zs[j])
    for i in range(C):  # 1 - s_i from the other classes for the target and the top class
        rest = q if i == y else ctx.fsum(s[:i] + s[i + 1:]) if i == m else 1 - s[i]
        H[i][i] = K * s[i] * rest - R * se[i] * se[i]
    return [[_public(h) for h in row_] for row_ in H]


def hvp_row(z, y, v, gamma, threshold=None, label_smoothing=0.0, dps=DPS):
    """``∇²L·v`` (list of mpmath numbers) of one row, O(C): ``K·s⊙(v - sᵀv) - R·(s - e)·((s - e)ᵀv)``."""
    ctx = context(dps)
    zs, s, q, _, _ = _softmax_in(ctx, z, y, dps)
    jv, t = _jv(tuple(z), y, tuple(v), dps)
    jv, t = [ctx.make_mpf(x) for x in jv], ctx.make_mpf(t)
    K, R = _curvature(ctx, s[y], gamma, threshold, ctx.convert(label_smoothing))
    out = [K * jv[j] - R * t * s[j] for j in range(len(zs))]
    out[y] = K * jv[y] + R * q * t
    return [_public(x) for x in out]


@functools.lru_cache(maxsize=64)
def _jv(z, y, v, dps):
    """``((diag s - s sᵀ)·v, (s - e)ᵀv)`` of one row (raw mpf): ``s_j·(v_j - sᵀv)`` with ``sᵀv - v_m``
    summed relative to the top class ``m`` (whose ``1 - s_m`` is the others' mass), and ``sᵀv - v_y``."""
    ctx = context(dps)
    zs, s, q, _, _ = _softmax_in(ctx, z, y, dps)
    vs = [ctx.convert(x) for x in v]
    m = max(range(len(zs)), key=lambda j: zs[j])
    sv = ctx.fsum(s[j] * (vs[j] - vs[m]) for j in range(len(zs)) if j != m)  # sᵀv - v_m
    return tuple((s[j] * ((vs[j] - vs[m]) - sv))._mpf_ for j in range(len(zs))), (sv + vs[m] - vs[y])._mpf_


def _loss_of_gamma(ctx, p, q):
    def f(g):
        c = 1 - g
        if c == 0:
            return q
        if abs(c * q) < ctx.mpf(1) / 2:
            return -ctx.log1p(-c * q) / c
        return -ctx.log(g + c * p) / c
    return f


def gamma_derivatives(z, y, gamma, label_smoothing=0.0, dps=DPS, with_grad=True):
    """``(dL/dγ, d²L/dγ², d∇L/dγ)`` of one γ-CE row (mpmath numbers; the last a list over the classes).

    Numerical derivatives (mpmath's ``diff``, one-sided towards γ + h with
    ``h`` far below ``γ + (1-γ)p``, at enough digits) of the definitions ``L(γ) = -log(γ + (1-γ)p)/(1-γ)`` (its
    limit ``1 - p`` at γ = 1) and ``w(γ) = p/(γ + (1-γ)p)``; ``d∇L/dγ`` is
    ``(1-ε)·dw/dγ·(s - e)``.  At a masked target (``p = 0``) and γ = 0 they
    are the infinite limits.  ``with_grad=False``: ``None`` for the last.
    """
    ctx = context(dps)
    zs, s, q, _, _ = _softmax_in(ctx, z, y, dps)
    p, eps, g = s[y], ctx.convert(label_smoothing), ctx.convert(gamma)
    ctx.dps = _extra_dps(ctx, p, q, g, dps)
    try:
        if p == 0 and g == 0:
            d1, d2, dw = -ctx.inf, ctx.inf, -ctx.inf
        else:
            # the step relative to u = γ + (1-γ)p, the scale on which L and w change with γ
            h = (g + (1 - g) * p) * ctx.ldexp(1, -ctx.prec - 10)
            f = _loss_of_gamma(ctx, p, q)
            d1 = ctx.diff(f, g, 1, direction=1, h=h)
            d2 = ctx.diff(f, g, 2, direction=1, h=h)
            dw = ctx.diff(lambda x: p / (x + (1 - x) * p), g, 1, direction=1, h=h)
        dgrad = None
        if with_grad:
            se = list(s)
            se[y] = -q
            dgrad = [_public((1 - eps) * dw * v if v != 0 else ctx.mpf(0)) for v in se]
        return _public((1 - eps) * d1), _public((1 - eps) * d2), dgrad
    finally:
        ctx.dps = dps
