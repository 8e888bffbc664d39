"""γ-CE and TaiLr as ``jax.custom_vjp`` functions with the core's analytic gradient.

``gamma_ce`` and ``tailr`` take the core's arguments; they work under
``jit``, ``vmap``, ``grad`` and ``value_and_grad``.  The value and the
gradient come from one pass of the core; the backward pass only scales the
stored gradient.  ``gamma`` and ``threshold`` may be traced (a γ schedule
inside a jitted step); a traced value outside [0, 1], like an invalid target
under ``jit``, gives NaN.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import _core

__all__ = ["gamma_ce", "tailr"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _loss(logits, targets, gamma, threshold, tailr, axis, reduction, ignore_index, label_smoothing):
    return _fwd(logits, targets, gamma, threshold, tailr, axis, reduction, ignore_index, label_smoothing)[0]


def _fwd(logits, targets, gamma, threshold, tailr, axis, reduction, ignore_index, label_smoothing):
    loss, grad = _core.value_and_grad(logits, targets, gamma, threshold, tailr=tailr, need_grad=True, axis=axis,
                                      reduction=reduction, ignore_index=ignore_index,
                                      label_smoothing=label_smoothing)
    return loss, (grad, targets, gamma, threshold)


def _bwd(tailr, axis, reduction, ignore_index, label_smoothing, res, g):
    grad, targets, gamma, threshold = res
    if reduction == "none":
        g = jnp.expand_dims(g, axis % grad.ndim)
    zero = functools.partial(jax.tree_util.tree_map, _zero_cotangent)
    return (grad * g.astype(grad.dtype), *zero((targets, gamma, threshold)))


def _zero_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return jnp.zeros(x.shape, dtype=jax.dtypes.float0)


_loss.defvjp(_fwd, _bwd)


def _unit(v):
    # Python numbers pass through (static, exact in double precision); arrays stay traced.
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else jnp.asarray(v)


def gamma_ce(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0):
    """γ-CE loss of :func:`gammace_ref.gamma_ce`, differentiable with the exact analytic gradient."""
    return _loss(logits, targets, _unit(gamma), 0.0, False, axis, reduction, ignore_index, label_smoothing)


def tailr(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None,
          label_smoothing=0.0):
    """TaiLr objective of :func:`gammace_ref.tailr`, differentiable with the paper's gradient."""
    return _loss(logits, targets, _unit(gamma), _unit(threshold), True, axis, reduction, ignore_index,
                 label_smoothing)
