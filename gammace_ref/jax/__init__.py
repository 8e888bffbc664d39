"""γ-CE and TaiLr as ``jax.custom_jvp`` functions with the core's exact derivatives.

``gamma_ce``, ``tailr`` and the hidden-states ``linear_gamma_ce`` /
``linear_tailr`` take the core's arguments and work under every JAX
transformation: ``jit``, ``vmap``, ``grad``, ``value_and_grad``, ``jvp``,
``linearize``, ``jacfwd``, ``jacrev``, ``hessian``, ``checkpoint`` and
grad-of-grad.  Each is a ``custom_jvp`` whose tangent is ``⟨∇L, ż⟩ +
∂L/∂γ·γ̇`` with the core's exact gradient; that gradient (and ∂L/∂γ) is
itself a ``custom_jvp`` whose tangent is the closed-form Hessian-vector
product (:func:`gammace_ref.gamma_ce_hvp`), so every second derivative is
exact in every regime, in O(N·C) and never through a C×C matrix.  A third
derivative raises ``NotImplementedError``.  First-order reverse mode
computes the value and the gradient in one pass, as before; a call that
differentiates nothing computes the value only.

``gamma`` and ``threshold`` given as Python numbers are static: checked
(``ValueError`` if outside [0, 1]) even inside ``jit``.  Given as arrays they
are operands, traced under ``jit`` (a γ schedule in a jitted step, no
recompilation); a traced value outside [0, 1], like an invalid target under
``jit``, gives NaN.  ``jax.grad`` with respect to an array γ is the exact
``∂L/∂γ`` of γ-CE (:func:`gammace_ref.gamma_ce_dgamma`).  TaiLr's surrogate
holds its weight ``W = clip(w, b, 1)`` constant (stop-gradient, as the
official criterion's ``weight.detach()``): its derivatives with respect to
γ and to the threshold are 0 by definition, and its Hessian is
``W·(diag s - s sᵀ)``, the Hessian of ``-stop_gradient(W)·log p``.
``targets`` get ``float0``.  NumPy inputs are converted with ``jnp.asarray``.

As an ``optax.softmax_cross_entropy_with_integer_labels(logits, labels,
where=mask)`` drop-in: ``gamma_ce(logits, labels, 0.0, reduction="none",
where=mask)`` (``where`` of the labels' shape; the masked-out entries give 0).
These functions follow optax, not torch: there is no ``ignore_index`` by
default (``None``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from .. import _api, _core, _docs, _execution, _options, _validation, linear

__all__ = ["gamma_ce", "linear_gamma_ce", "linear_tailr", "tailr"]


def _as_jax(*arrays):
    return [jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays]


class _Fused(_execution.Masked):
    """The target mask as a 0/1 factor of ``exp(z - m)``, not a ``select``.

    XLA:CPU fuses ``exp(z - m)·mask`` into the row sum, as it does optax's
    ``logsumexp``, but materialises an N×C array for a ``select`` (or any
    comparison) before a reduction: with the factor, a loss-only program
    keeps no logits-sized temporary.  ``min(|j - y|, 1)`` is exact (0 on the
    target, 1 elsewhere; in the logits' float dtype while it holds every
    class index exactly) and needs no comparison; it is formed from the raw
    targets ``y`` (a row whose target is ignored or out of range is not
    counted, or is poisoned, whatever its entries).
    """

    def __init__(self, xp, device, y):
        super().__init__(xp, device)
        self.y = y

    def exp_off_target(self, z, m):
        n, dt = z.shape[-1], z.dtype
        if n < 2 ** (jnp.finfo(dt).nmant + 1):  # class indices exact in z's dtype: XLA:CPU fuses this form
            j, y = jnp.arange(n, dtype=dt), self.y.astype(dt)[..., None]
        else:
            j, y = jnp.arange(n, dtype=self.y.dtype), self.y[..., None]
        return jnp.exp(z - m) * jnp.minimum(jnp.abs(j - y), 1).astype(dt)


class _FusedSharded(_execution.Sharded):
    """This device's slice of the classes inside ``shard_map`` (mesh axis ``axis_name``), masked as :class:`_Fused`.

    The slice is ``[i·C_local, (i+1)·C_local)`` for the device's index ``i``
    along the axis; the row maxima and sums are ``pmax``/``psum`` across it:
    O(N) values, never the logits.
    """

    def __init__(self, xp, device, y, axis_name, n_local):
        size = jax.lax.axis_size(axis_name)
        super().__init__(xp, device, offset=jax.lax.axis_index(axis_name) * n_local, n_classes=size * n_local,
                         max=functools.partial(jax.lax.pmax, axis_name=axis_name),
                         sum=functools.partial(jax.lax.psum, axis_name=axis_name))
        self.y = y - self.offset

    exp_off_target = _Fused.exp_off_target


def _run(logits, targets, opts, axis, *, v=None, gamma_dot=None, need_grad=True, need_dgamma=False, shard=None):
    """The core on JAX arrays: ``compute`` for the value and gradient, ``second_order`` beyond (a ``Second``).

    ``shard``: ``None``, or the mesh axis name the classes are split over
    (inside ``shard_map``: the row reductions run across it).
    """
    logits, targets = _as_jax(logits, targets)
    a = _validation.check_logits(logits, targets, opts, axis=axis)
    p = _Fused(a.xp, a.device, a.y) if shard is None else _FusedSharded(a.xp, a.device, a.y, shard, a.z.shape[-1])
    if v is None and gamma_dot is None and not need_dgamma:
        loss, grad, _ = _core.compute(a.xp, a.z, a.y, opts, need_grad=need_grad, plan=p)
        out = _core.Second(loss, grad, None, None, None)
    else:
        out = _core.second_order(a.xp, a.z, a.y, opts, v=None if v is None else _api.tangent(a, logits, v),
                                 gamma_dot=gamma_dot, need_grad=need_grad, need_dgamma=need_dgamma, plan=p)
    return out._replace(grad=_api.restore_layout(a, out.grad), hvp=_api.restore_layout(a, out.hvp))


def _zero(t):
    return t is None or isinstance(t, SymbolicZero)


def _gamma_tangent(static, operands, tangents):
    """The tangent of a γ operand of γ-CE, or ``None`` (static γ, no tangent, or TaiLr: W is a constant)."""
    if static.tailr or operands[0] is None or _zero(tangents[0]):
        return None
    return tangents[0]


def _contract(grad, dz, per_row, axis, dtype, shard=None):
    """``⟨grad, dz⟩`` per row (``reduction="none"``: over the class axis) or in all (across ``shard`` too)."""
    if _zero(dz):
        return None
    prod = grad * dz.astype(grad.dtype)
    out = (jnp.sum(prod, axis=axis) if per_row else jnp.sum(prod)).astype(dtype)
    return out if shard is None else jax.lax.psum(out, shard)


def _add(*terms):
    terms = [t for t in terms if t is not None]
    return functools.reduce(lambda a, b: a + b, terms) if terms else None


# --------------------------------------------------------------------------- on logits
# Each custom_jvp takes the options split (Options.split): the arrays among
# them (a traced γ) as `operands`, the rest as the hashable `static`.
# `_loss` (the value only) → its tangent from `_first` (value, gradient and
# dL/dγ in one pass) → whose tangent comes from `_second` (the core's
# second-order pass), which refuses a third derivative.


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _loss(logits, targets, operands, static, axis, shard):
    return _run(logits, targets, _options.Options.join(static, operands), axis, need_grad=False, shard=shard).loss


@functools.partial(_loss.defjvp, symbolic_zeros=True)
def _loss_jvp(static, axis, shard, primals, tangents):
    logits, targets, operands = primals
    dz, dgam = tangents[0], _gamma_tangent(static, operands, tangents[2])
    loss, grad, dgamma = _first(logits, targets, operands, static, axis, shard, (not _zero(dz), dgam is not None))
    dot = _add(_contract(grad, dz, static.reduction == "none", axis, loss.dtype, shard),
               None if dgam is None else dgamma * dgam.astype(loss.dtype))
    return loss, jnp.zeros_like(loss) if dot is None else dot


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6))
def _first(logits, targets, operands, static, axis, shard, flags):
    """``(loss, grad, dgamma)``; ``flags = (need_grad, need_dgamma)`` (``None`` for what is not needed)."""
    out = _second(logits, targets, operands, None, None, static, axis, shard, flags)
    return out.loss, out.grad, out.dgamma


@functools.partial(_first.defjvp, symbolic_zeros=True)
def _first_jvp(static, axis, shard, flags, primals, tangents):
    logits, targets, operands = primals
    dz, dgam = tangents[0], _gamma_tangent(static, operands, tangents[2])
    v = None if _zero(dz) else dz
    need_grad, need_dgamma = flags
    out = _second(logits, targets, operands, v, dgam, static, axis, shard,
                  (need_grad or v is not None, need_dgamma or dgam is not None))
    loss_dot = _add(_contract(out.grad, v, static.reduction == "none", axis, out.loss.dtype, shard),
                    None if dgam is None else out.dgamma * dgam.astype(out.loss.dtype))
    primal = (out.loss, out.grad if need_grad else None, out.dgamma if need_dgamma else None)
    tangent = (jnp.zeros_like(out.loss) if loss_dot is None else loss_dot,
               (jnp.zeros_like(out.grad) if out.hvp is None else out.hvp) if need_grad else None,
               (jnp.zeros_like(out.dgamma) if out.dgamma_dot is None else out.dgamma_dot) if need_dgamma else None)
    return primal, tangent


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6, 7, 8))
def _second(logits, targets, operands, v, gamma_dot, static, axis, shard, flags):
    """:func:`gammace_ref._core.second_order`: the loss, gradient, dL/dγ and their tangents along ``(v, γ̇)``."""
    need_grad, need_dgamma = flags
    return _run(logits, targets, _options.Options.join(static, operands), axis, v=v, gamma_dot=gamma_dot,
                need_grad=need_grad, need_dgamma=need_dgamma, shard=shard)


@_second.defjvp
def _second_jvp(static, axis, shard, flags, primals, tangents):
    raise NotImplementedError("gammace_ref.jax: third and higher derivatives of the loss are not implemented "
                              "(the first and second are exact; a third would differentiate the closed-form "
                              "Hessian-vector product)")


def _call(fn, arrays, opts, *static_args):
    # Arrays among the options (a traced γ) become operands of the custom_jvp;
    # the Python numbers stay static (checked by the validator, in double).
    static, operands = opts.split()
    operands = tuple(None if v is None else jnp.asarray(v) for v in operands)
    return fn(*arrays, operands, static, *static_args)


def value_and_grad(logits, targets, opts, axis):
    """``(loss, grad)`` of the core, each differentiable with the exact derivatives (for ``gammace_ref``'s routing)."""
    return _call(_first, (logits, targets), opts, axis, None, (True, False))[:2]


def dgamma(logits, targets, opts, axis):
    """dL/dγ of the core, differentiable (second derivatives) with the exact closed forms."""
    return _call(_first, (logits, targets), opts, axis, None, (False, True))[2]


def from_core(what, arguments):
    """``gammace_ref``'s functions on JAX tracers (``jit``, ``grad``, ``vmap``, ...): through the custom rules.

    ``arguments``: the core function's own.  A transformation of a function
    that calls ``gammace_ref.gamma_ce`` (or ``tailr``, ``*_value_and_grad``,
    ``gamma_ce_dgamma``) then differentiates it with the exact derivatives of
    this module (and ``*_hvp``, whose derivative would be a third one, raises
    when differentiated).  Concrete arrays (no transformation) return
    ``None``: the core runs as it is.
    """
    names = ("logits", "targets", "v", "gamma", "threshold", "where")
    if not any(isinstance(arguments.get(k), jax.core.Tracer) for k in names):
        return None
    opts = _validation.options_of(arguments)
    logits, targets, axis = arguments["logits"], arguments["targets"], arguments["axis"]
    if what == "loss":
        return _call(_loss, (logits, targets), opts, axis, None)
    if what == "value_and_grad":
        return value_and_grad(logits, targets, opts, axis)
    if what == "dgamma":
        return dgamma(logits, targets, opts, axis)
    static, operands = opts.split()
    return _second(logits, targets, tuple(None if o is None else jnp.asarray(o) for o in operands), arguments["v"],
                   None, static, axis, None, (False, False)).hvp


@_docs.shared("loss")
def gamma_ce(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0, where=None):
    """γ-CE loss of :func:`gammace_ref.gamma_ce`, differentiable with its exact first and second derivatives.
    """
    opts = _validation.options_of(locals())
    return _call(_loss, (logits, targets), opts, axis, None)


@_docs.shared("loss")
def tailr(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None,
          label_smoothing=0.0, where=None):
    """TaiLr objective of :func:`gammace_ref.tailr`: the paper's gradient, the stop-gradient surrogate's Hessian.
    """
    opts = _validation.options_of(locals())
    return _call(_loss, (logits, targets), opts, axis, None)


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


def _zero_cotangents(*trees):
    """Zero cotangents for the non-differentiated inputs (``float0`` for integer ones)."""
    def zero(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros_like(x)
        return jnp.zeros(x.shape, dtype=jax.dtypes.float0)

    return jax.tree_util.tree_map(zero, trees)


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
