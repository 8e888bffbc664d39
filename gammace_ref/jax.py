"""γ-CE and TaiLr as ``jax.custom_vjp`` functions with the core's analytic gradient.

``gamma_ce`` and ``tailr`` take the core's arguments; they work under
``jit``, ``vmap``, ``grad`` and ``value_and_grad``.  The value and the
gradient come from one pass of the core; the backward pass only scales the
stored gradient.  NumPy inputs are converted with ``jnp.asarray``.

``gamma`` and ``threshold`` given as Python numbers are static: checked
(``ValueError`` if outside [0, 1]) even inside ``jit``.  Given as arrays they
are operands, traced under ``jit`` (a γ schedule in a jitted step, no
recompilation); a traced value outside [0, 1], like an invalid target under
``jit``, gives NaN.
Only ``logits`` is differentiated: the gradient with respect to ``gamma`` or
``threshold`` is zero (they are treated as constants), and ``float0`` for
the integer ``targets``.  Forward mode on the loss (``jvp``, ``jacfwd``) is
not defined; forward over reverse (``jax.hessian``) differentiates the gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import _core, _validation, linear

__all__ = ["gamma_ce", "linear_gamma_ce", "linear_tailr", "tailr"]


# `scalars`: (gamma, threshold), each a traced 0-d array or None; `static`:
# (gamma, threshold, ...) with the Python numbers in place of the Nones.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _loss(logits, targets, scalars, static):
    return _fwd(logits, targets, scalars, static)[0]


def _fwd(logits, targets, scalars, static):
    # NumPy arrays reach here as they are (jax.grad of a NumPy input hands the fwd rule its primal).
    logits, targets = (jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in (logits, targets))
    gamma, threshold = (s if s is not None else v for s, v in zip(scalars, static[:2]))
    tailr, axis, reduction, ignore_index, label_smoothing = static[2:]
    loss, grad = _core.value_and_grad(logits, targets, gamma, threshold, tailr=tailr, need_grad=True, axis=axis,
                                      reduction=reduction, ignore_index=ignore_index,
                                      label_smoothing=label_smoothing)
    return loss, (grad, targets, scalars)


def _bwd(static, res, g):
    grad, targets, scalars = res
    axis, reduction = static[3:5]
    if reduction == "none":
        g = jnp.expand_dims(g, axis % grad.ndim)
    zero = functools.partial(jax.tree_util.tree_map, _zero_cotangent)
    return (grad * g.astype(grad.dtype), *zero((targets, scalars)))


def _zero_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return jnp.zeros(x.shape, dtype=jax.dtypes.float0)


_loss.defvjp(_fwd, _bwd)


def _call(logits, targets, gamma, threshold, *static):
    # Arrays (also NumPy's) become operands of the custom_vjp (traced under jit);
    # anything else stays a static Python value, which the core checks (in double).
    traced = [jnp.asarray(v) if _validation._is_array(v) else None for v in (gamma, threshold)]
    fixed = [None if t is not None else v for t, v in zip(traced, (gamma, threshold))]
    return _loss(logits, targets, tuple(traced), (*fixed, *static))


def gamma_ce(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0):
    """γ-CE loss of :func:`gammace_ref.gamma_ce`, differentiable with the exact analytic gradient."""
    return _call(logits, targets, gamma, 0.0, False, axis, reduction, ignore_index, label_smoothing)


def tailr(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None,
          label_smoothing=0.0):
    """TaiLr objective of :func:`gammace_ref.tailr`, differentiable with the paper's gradient."""
    return _call(logits, targets, gamma, threshold, True, axis, reduction, ignore_index, label_smoothing)


# --------------------------------------------------------------------------- from hidden states
# `static`: (gamma, threshold, tailr, reduction, ignore_index, label_smoothing, memory_budget, chunk_size)
# with None for a traced gamma / threshold (then in `scalars`).
@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _linear_loss(hidden, weight, bias, targets, scalars, static):
    return _linear_fwd(hidden, weight, bias, targets, scalars, static)[0]


def _linear_args(arrays, scalars, static):
    arrays = [jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays]
    gamma, threshold = (s if s is not None else v for s, v in zip(scalars, static[:2]))
    return arrays, (gamma, threshold, static[2])


def _linear_fwd(hidden, weight, bias, targets, scalars, static):
    (hidden, weight, bias, targets), head = _linear_args((hidden, weight, bias, targets), scalars, static)
    if static[3] == "none":  # the backward pass runs the chunks again with the per-target cotangent
        loss = linear._run(hidden, weight, bias, targets, *head, False, *static[3:], scan=jax.lax.scan).loss
        return loss, (hidden, weight, bias, targets, scalars)
    out = linear._run(hidden, weight, bias, targets, *head, True, *static[3:], scan=jax.lax.scan)
    return out.loss, (out.hidden, out.weight, out.bias, targets, scalars)


def _linear_bwd(static, res, g):
    zero = functools.partial(jax.tree_util.tree_map, _zero_cotangent)
    if static[3] == "none":
        (hidden, weight, bias, targets), head = _linear_args(res[:4], res[4], static)
        out = linear._run(hidden, weight, bias, targets, *head, True, *static[3:], cotangent=g, scan=jax.lax.scan)
        grads = (out.hidden, out.weight, out.bias)
    else:
        grads = tuple(None if t is None else t * g.astype(t.dtype) for t in res[:3])
    return (*grads, *zero((res[3], res[4])))


_linear_loss.defvjp(_linear_fwd, _linear_bwd)


def _linear_call(hidden, weight, bias, targets, gamma, threshold, *static):
    traced = [jnp.asarray(v) if _validation._is_array(v) else None for v in (gamma, threshold)]
    fixed = [None if t is not None else v for t, v in zip(traced, (gamma, threshold))]
    return _linear_loss(hidden, weight, bias, targets, tuple(traced), (*fixed, *static))


def linear_gamma_ce(hidden, weight, targets, gamma, *, bias=None, reduction="mean", ignore_index=None,
                    label_smoothing=0.0, memory_budget=None, chunk_size=None):
    """γ-CE of ``hidden @ weight.T + bias``, differentiable in ``hidden``, ``weight`` and ``bias``.

    Computed chunk by chunk by :mod:`gammace_ref.linear` (no N×C logits);
    works under ``jit`` and ``grad``.
    """
    return _linear_call(hidden, weight, bias, targets, gamma, 0.0, False, reduction, ignore_index, label_smoothing,
                        memory_budget, chunk_size)


def linear_tailr(hidden, weight, targets, gamma, threshold, *, bias=None, reduction="mean", ignore_index=None,
                 label_smoothing=0.0, memory_budget=None, chunk_size=None):
    """TaiLr objective of ``hidden @ weight.T + bias`` with the paper's gradient, chunk by chunk."""
    return _linear_call(hidden, weight, bias, targets, gamma, threshold, True, reduction, ignore_index,
                        label_smoothing, memory_budget, chunk_size)
