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

from . import _api, _docs, _options, _validation, linear

__all__ = ["gamma_ce", "linear_gamma_ce", "linear_tailr", "tailr"]


# Each custom_vjp takes the options split (Options.split): the arrays among
# them (a traced γ) as `operands`, the rest as the hashable `static`.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _loss(logits, targets, operands, static, axis):
    return _fwd(logits, targets, operands, static, axis)[0]


def _fwd(logits, targets, operands, static, axis):
    # NumPy arrays reach here as they are (jax.grad of a NumPy input hands the fwd rule its primal).
    logits, targets = _as_jax(logits, targets)
    loss, grad = _api.value_and_grad(logits, targets, _options.Options.join(static, operands), axis=axis)
    return loss, (grad, targets, operands)


def _bwd(static, axis, res, g):
    grad, targets, operands = res
    if static.reduction == "none":
        g = jnp.expand_dims(g, axis % grad.ndim)
    return (grad * g.astype(grad.dtype), *_zero_cotangents(targets, operands))


_loss.defvjp(_fwd, _bwd)


def _as_jax(*arrays):
    return [jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays]


def _zero_cotangents(*trees):
    """Zero cotangents for the non-differentiated inputs (``float0`` for integer ones)."""
    def zero(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros_like(x)
        return jnp.zeros(x.shape, dtype=jax.dtypes.float0)

    return jax.tree_util.tree_map(zero, trees)


def _call(fn, arrays, opts, *static_args):
    for a in arrays:  # JAX without x64 makes NumPy int64 targets int32: refuse a value that would wrap
        if isinstance(a, np.ndarray) and jax.dtypes.canonicalize_dtype(a.dtype) != a.dtype:
            _validation.check_narrowing("targets", a, jax.dtypes.canonicalize_dtype(a.dtype))
    # Arrays among the options (a traced γ) become operands of the custom_vjp;
    # the Python numbers stay static (checked by the validator, in double).
    static, operands = opts.split()
    operands = tuple(None if v is None else jnp.asarray(v) for v in operands)
    return fn(*arrays, operands, static, *static_args)


@_docs.shared("loss")
def gamma_ce(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0, where=None):
    """γ-CE loss of :func:`gammace_ref.gamma_ce`, differentiable with the exact analytic gradient.
    """
    opts = _validation.options_of(locals())
    return _call(_loss, (logits, targets), opts, axis)


@_docs.shared("loss")
def tailr(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None,
          label_smoothing=0.0, where=None):
    """TaiLr objective of :func:`gammace_ref.tailr`, differentiable with the paper's gradient.
    """
    opts = _validation.options_of(locals())
    return _call(_loss, (logits, targets), opts, axis)


# --------------------------------------------------------------------------- from hidden states
# `sizes`: (memory_budget, chunk_size).
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _linear_loss(hidden, weight, bias, targets, operands, static, sizes):
    return _linear_fwd(hidden, weight, bias, targets, operands, static, sizes)[0]


def _linear_run(arrays, operands, static, sizes, **kw):
    memory_budget, chunk_size = sizes
    return linear.run(*_as_jax(*arrays), _options.Options.join(static, operands), memory_budget=memory_budget,
                      chunk_size=chunk_size, scan=jax.lax.scan, **kw)


def _linear_fwd(hidden, weight, bias, targets, operands, static, sizes):
    arrays = (hidden, weight, bias, targets)
    if static.reduction == "none":  # the backward pass runs the chunks again with the per-target cotangent
        return _linear_run(arrays, operands, static, sizes, need_grad=False).loss, (*arrays, operands)
    out = _linear_run(arrays, operands, static, sizes)
    return out.loss, (out.hidden, out.weight, out.bias, targets, operands)


def _linear_bwd(static, sizes, res, g):
    if static.reduction == "none":
        out = _linear_run(res[:4], res[4], static, sizes, cotangent=g)
        grads = (out.hidden, out.weight, out.bias)
    else:
        grads = tuple(None if t is None else t * g.astype(t.dtype) for t in res[:3])
    return (*grads, *_zero_cotangents(res[3], res[4]))


_linear_loss.defvjp(_linear_fwd, _linear_bwd)


@_docs.shared("loss")
def linear_gamma_ce(hidden, weight, targets, gamma, *, bias=None, reduction="mean", ignore_index=None,
                    label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None):
    """γ-CE of ``hidden @ weight.T + bias``, differentiable in ``hidden``, ``weight`` and ``bias``.

    Computed chunk by chunk by :mod:`gammace_ref.linear` (no N×C logits);
    works under ``jit`` and ``grad``.
    """
    opts = _validation.options_of(locals())
    return _call(_linear_loss, (hidden, weight, bias, targets), opts, (memory_budget, chunk_size))


@_docs.shared("loss")
def linear_tailr(hidden, weight, targets, gamma, threshold, *, bias=None, reduction="mean", ignore_index=None,
                 label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None):
    """TaiLr objective of ``hidden @ weight.T + bias`` with the paper's gradient, chunk by chunk.
    """
    opts = _validation.options_of(locals())
    return _call(_linear_loss, (hidden, weight, bias, targets), opts, (memory_budget, chunk_size))
