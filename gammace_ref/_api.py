r"""The public loss functions: validation, then the core, then the result in the caller's layout.

:func:`value_and_grad` is the one path every function here (and the torch
adapter's eager path) takes: :func:`~gammace_ref._validation.check_logits`,
:func:`~gammace_ref._core.compute` with the execution plan that suits the
arrays, then :func:`finish` (name an invalid row where values can be read;
the gradient back to the logits' layout and dtype).
"""

from __future__ import annotations

import importlib

import array_api_compat

from . import _core, _docs, _execution, _options, _validation


#: Array families whose autodiff would otherwise differentiate the core's formulas (TaiLr's weight,
#: the branches of a masked target) and the adapter that carries the analytic derivatives instead.
_ADAPTERS = ((array_api_compat.is_jax_array, "gammace_ref.jax"),
             (array_api_compat.is_torch_array, "gammace_ref.torch._autograd"))


def adapted(what, arguments: dict):
    """The adapter's result where an autodiff system follows the arrays (a JAX tracer, a torch tensor that
    requires grad or carries a forward-mode tangent), else ``None``.

    ``what``: ``"loss"``, ``"value_and_grad"``, ``"hvp"`` or ``"dgamma"``;
    ``arguments``: the public function's own (``locals()`` at its top: the
    adapter checks them as the function would).  Only the array family is
    recognised here (through array-api-compat); what "followed" means is each
    adapter's ``from_core``.
    """
    for is_family, module in _ADAPTERS:
        if is_family(arguments["logits"]):
            return importlib.import_module(module).from_core(what, arguments)
    return None


def value_and_grad(logits, targets, opts: _options.Options, *, axis=-1, need_grad=True, xp=None, traced=False):
    """Loss (reduced) and, if ``need_grad``, its gradient with respect to ``logits`` (else ``None``).

    ``xp``: the namespace, when an adapter has checked the arrays' type;
    ``traced``: a compiler is tracing the call (nothing may be read, nothing
    written in place), which a library's own trace would not otherwise tell.
    """
    a = _validation.check_logits(logits, targets, opts, axis=axis, xp=xp)
    plan = _execution.plan(a.xp, a.z, a.device, eager=not traced)
    loss, grad, _ = _core.compute(a.xp, a.z, a.y, opts, need_grad=need_grad, plan=plan)
    return loss, restore_layout(a, grad)


def restore_layout(a: _validation.Checked, grad):
    """Gradient from the compute layout (class axis last, compute dtype) to the logits' own (``None`` stays)."""
    if grad is None:
        return None
    if a.axis != grad.ndim - 1:
        grad = a.xp.moveaxis(grad, -1, a.axis)
    return a.xp.astype(grad, a.out_dtype, copy=False)


@_docs.shared("loss", "grad")
def gamma_ce_value_and_grad(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None,
                            label_smoothing=0.0, where=None):
    r"""γ-cross-entropy and its exact gradient with respect to ``logits``.

    $$
    L = -\frac{\log(\gamma + (1-\gamma)\,p_y)}{1-\gamma},\qquad
    \frac{\partial L}{\partial z} = w\,(\mathrm{softmax}(z) - e_y),\quad
    w = \frac{p_y}{\gamma + (1-\gamma)\,p_y},
    $$

    with ``p = softmax(z)`` along ``axis``; γ = 0 is cross-entropy, γ = 1 the
    limit ``1 - p``.  Relative error ≤ 1e-12 (float64) and ≤ 2e-5 (float32)
    against 60-digit mpmath in every regime, including ``1 - p`` far below
    machine epsilon and ``log p ≪ -700``.

    Examples
    --------
    >>> import numpy as np
    >>> from gammace_ref import gamma_ce_value_and_grad
    >>> z = np.array([[60.0, 0.0, 0.0]])       # p = 1 - 1.75e-26
    >>> loss, g = gamma_ce_value_and_grad(z, np.array([0]), 0.1)
    >>> print(f"{float(loss):.15e}")            # ≈ 1 - p, not 0
    1.751302152539304e-26
    >>> print(f"{float(g[0, 0]):.15e}")         # -w·(1 - p), not 0
    -1.751302152539304e-26
    """
    if (out := adapted("value_and_grad", locals())) is not None:
        return out
    opts = _validation.options_of(locals())
    return value_and_grad(logits, targets, opts, axis=axis)


@_docs.shared("loss")
def gamma_ce(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0,
             where=None):
    """γ-cross-entropy ``-log(γ + (1-γ)p)/(1-γ)`` (no gradient work); see :func:`gamma_ce_value_and_grad`.
    """
    if (out := adapted("loss", locals())) is not None:
        return out
    opts = _validation.options_of(locals())
    return value_and_grad(logits, targets, opts, axis=axis, need_grad=False)[0]


@_docs.shared("grad")
def gamma_ce_grad(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0,
                  where=None):
    """Gradient ``w·(softmax - onehot)`` of :func:`gamma_ce` with respect to ``logits``.
    """
    return gamma_ce_value_and_grad(logits, targets, gamma, axis=axis, reduction=reduction,
                                   ignore_index=ignore_index, label_smoothing=label_smoothing, where=where)[1]


@_docs.shared("loss", "grad")
def tailr_value_and_grad(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None,
                         label_smoothing=0.0, where=None):
    r"""TaiLr objective as the official criterion computes it, and its gradient.

    Per target, with the weight ``W = clip(w, b, 1)`` held constant
    (stop-gradient) and ``b = threshold``:

    $$
    \begin{aligned}
    \ell &= (1-\varepsilon)\,W\,(-\log p_y) + \frac{\varepsilon}{C}\sum_j(-\log p_j),\\
    \frac{\partial \ell}{\partial z} &= (1-\varepsilon)\,W\,(\mathrm{softmax} - e_y)
        + \varepsilon\,(\mathrm{softmax} - 1/C).
    \end{aligned}
    $$

    The value is a surrogate (its true derivative would also differentiate
    ``W``); the gradient is the paper's.  ``b = 0`` gives exactly the
    :func:`gamma_ce` gradient; γ = 1, b = 0 is DFT's ``sg(p)·(-log p)``.
    """
    if (out := adapted("value_and_grad", locals())) is not None:
        return out
    opts = _validation.options_of(locals())
    return value_and_grad(logits, targets, opts, axis=axis)


@_docs.shared("loss")
def tailr(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0,
          where=None):
    """TaiLr surrogate ``clip(w, b, 1)·(-log p)`` (no gradient work); see :func:`tailr_value_and_grad`.
    """
    if (out := adapted("loss", locals())) is not None:
        return out
    opts = _validation.options_of(locals())
    return value_and_grad(logits, targets, opts, axis=axis, need_grad=False)[0]


@_docs.shared("grad")
def tailr_grad(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None,
               label_smoothing=0.0, where=None):
    """The paper's gradient ``clip(w, b, 1)·(softmax - onehot)``; see :func:`tailr_value_and_grad`.
    """
    return tailr_value_and_grad(logits, targets, gamma, threshold, axis=axis, reduction=reduction,
                                ignore_index=ignore_index, label_smoothing=label_smoothing, where=where)[1]


# --------------------------------------------------------------------------- on target log-probabilities


def _logp_terms(logp, gamma):
    """``(xp, L, w)`` of :func:`gammace_ref._core.gamma_terms` for ``log p``, with ``1 - p = -expm1(log p)``."""
    xp, device = _validation.namespace([("logp", logp)])
    _validation.real_floating(xp, "logp", logp)
    gamma = _validation.unit_interval("gamma", gamma)
    return (xp, *_core.gamma_terms(xp, logp, -xp.expm1(logp), gamma, device))


@_docs.shared("value")
def gamma_ce_from_logp(logp, gamma):
    r"""γ-CE loss ``-log(γ + (1-γ)·p) / (1-γ)`` from target log-probabilities.

    Exact in every regime because ``1 - p`` is taken as ``-expm1(log p)``;
    γ = 1 gives the limit ``1 - p``.

    Examples
    --------
    >>> import numpy as np
    >>> float(gamma_ce_from_logp(np.asarray(-1e-20), 0.5))  # 1 - p = 1e-20
    1e-20
    """
    return _logp_terms(logp, gamma)[1]


@_docs.shared("value")
def gamma_ce_dlogp(logp, gamma):
    r"""Derivative of the γ-CE loss with respect to ``log p``: ``-w``, ``w = p/(γ + (1-γ)p)``.

    Chain it with your own ``d log p / d θ``; for logits the result is
    ``w·(softmax - onehot)``.
    """
    return -_logp_terms(logp, gamma)[2]


@_docs.shared("value")
def tailr_weight(logp, gamma, threshold=0.0):
    r"""TaiLr token weight ``clip(p/(γ + (1-γ)p), b, 1)`` from ``log p``.

    The official criterion multiplies the NLL by this weight held constant
    (stop-gradient); ``threshold = b = 0`` gives the γ-CE weight ``w``.
    """
    b = _validation.unit_interval("threshold", threshold)
    xp, _, w = _logp_terms(logp, gamma)
    return xp.clip(w, b, 1.0)


# --------------------------------------------------------------------------- second order and dL/dγ


def second_order(logits, targets, opts: _options.Options, *, axis=-1, v=None, gamma_dot=None, need_grad=True,
                 need_dgamma=False, xp=None, traced=False) -> _core.Second:
    """:func:`gammace_ref._core.second_order` on checked inputs; ``grad`` and ``hvp`` in the logits' layout.

    ``v``: a tangent of ``logits`` (their shape, any real floating dtype) or
    ``None``; ``gamma_dot``: a tangent of γ or ``None``; ``xp``, ``traced`` as
    in :func:`value_and_grad`.
    """
    a = _validation.check_logits(logits, targets, opts, axis=axis, xp=xp)
    if v is not None:
        v = tangent(a, logits, v, xp=xp)
    plan = _execution.plan(a.xp, a.z, a.device, eager=not traced)
    out = _core.second_order(a.xp, a.z, a.y, opts, v=v, gamma_dot=gamma_dot, need_grad=need_grad,
                             need_dgamma=need_dgamma, plan=plan)
    return out._replace(grad=restore_layout(a, out.grad), hvp=restore_layout(a, out.hvp))


def tangent(a: _validation.Checked, logits, v, *, name="v", xp=None):
    """``v`` (a direction in logits space: their shape, library and device) in the compute layout of ``a``."""
    _validation.namespace([("logits", logits), (name, v)], xp)
    _validation.real_floating(a.xp, name, v)
    if tuple(v.shape) != tuple(logits.shape):
        raise ValueError(f"{name} shape {tuple(v.shape)} does not match logits shape {tuple(logits.shape)}")
    v = a.xp.astype(v, a.z.dtype, copy=False)
    return v if a.axis == v.ndim - 1 else a.xp.moveaxis(v, a.axis, -1)


_V = ("array, the shape of logits", "The direction: a tangent of ``logits`` (any real floating dtype).")


@_docs.shared("hvp", v=_V)
def gamma_ce_hvp(logits, targets, gamma, v, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0,
                 where=None):
    r"""Hessian-vector product ``∇²L·v`` of :func:`gamma_ce` with respect to ``logits``: exact, O(N·C).

    Per row, with ``s = softmax(z)``, ``e`` the one-hot target,
    ``w = p/(γ + (1-γ)p)`` and ``a = γ/(γ + (1-γ)p) = 1 - (1-γ)w``:

    $$
    \nabla^2 L\,v = w\,\bigl(s\odot v - s\,(s^\top v)\bigr) - w\,a\,(s - e)\,\bigl((s - e)^\top v\bigr)
    $$

    (label smoothing ε: the first term's weight is ``(1-ε)w + ε``, the second
    one's ``(1-ε)wa``).  ``(s - e)ᵀv`` is formed as ``Σ_{j≠y} s_j (v_j - v_y)``,
    so a row with ``1 - p`` far below machine epsilon keeps its relative
    accuracy; no C×C matrix is formed.  Relative error (norm-wise per row)
    ≤ 1e-12 in float64 and ≤ 2e-5 in float32 against mpmath in every regime.

    Examples
    --------
    >>> import numpy as np
    >>> z, y = np.array([[0.3, -1.2, 2.0, 0.7]]), np.array([1])
    >>> hv = gamma_ce_hvp(z, y, 0.3, np.array([[2.0, 1.0, 1.0, 1.0]]), reduction="sum")
    >>> print(np.array2string(hv, precision=6))
    [[ 0.007958  0.009254 -0.013525 -0.003686]]
    """
    if (out := adapted("hvp", locals())) is not None:
        return out
    opts = _validation.options_of(locals())
    return second_order(logits, targets, opts, axis=axis, v=v, need_grad=False).hvp


@_docs.shared("hvp", v=_V)
def tailr_hvp(logits, targets, gamma, threshold, v, *, axis=-1, reduction="mean", ignore_index=None,
              label_smoothing=0.0, where=None):
    r"""Hessian-vector product of the TaiLr surrogate, its weight ``W = clip(w, b, 1)`` held constant.

    ``∇²ℓ·v = ((1-ε)W + ε)·(s⊙v - s (sᵀv))``: the Hessian of
    ``-stop_gradient(W)·log p`` that the official criterion trains, not the
    Jacobian of the paper's gradient field (which would differentiate ``W``).
    """
    if (out := adapted("hvp", locals())) is not None:
        return out
    opts = _validation.options_of(locals())
    return second_order(logits, targets, opts, axis=axis, v=v, need_grad=False).hvp


@_docs.shared("dgamma")
def gamma_ce_dgamma(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0,
                    where=None):
    r"""dL/dγ of :func:`gamma_ce`: exact, including the limits γ → 0 and γ → 1.

    From ``L = -log(u)/(1-γ)``, ``u = γ + (1-γ)p``:

    $$
    \frac{\partial L}{\partial\gamma} = -\frac{1}{(1-\gamma)^2}
        \Bigl(\frac{(1-\gamma)(1-p)}{u} + \log u\Bigr),
    $$

    whose two terms cancel when ``x = (1-γ)(1-p)`` is small: there it is
    the series ``-(1-p)² Σ_k (k+1)/(k+2) x^k`` (at γ = 1: ``-(1-p)²/2``).
    Label smoothing scales it by ``1 - ε`` (the smoothing term does not depend
    on γ).  TaiLr's surrogate holds its weight constant, so its derivative in
    γ (and in the threshold) is 0 by definition.

    Examples
    --------
    >>> import numpy as np
    >>> z, y = np.array([[0.3, -1.2, 2.0, 0.7]]), np.array([1])
    >>> print(f"{float(gamma_ce_dgamma(z, y, 0.3)):.6f}")
    -2.023960
    """
    if (out := adapted("dgamma", locals())) is not None:
        return out
    opts = _validation.options_of(locals())
    return second_order(logits, targets, opts, axis=axis, need_grad=False, need_dgamma=True).dgamma
