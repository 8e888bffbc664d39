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
differentiates nothing computes the value only.  Limits (see
docs/transformations.md): reverse over forward (``jacrev(jacfwd(f))``) runs
JAX's own transpose of the product, which loses digits in two corners (an
exact two-way tie as γ → 1; 1 - p ~ 1e-304 where subnormals are flushed), and
grad of grad of ``linear_*`` with ``reduction="none"`` fails inside JAX.

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

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from .. import _api, _core, _docs, _execution, _options, _validation, linear

__all__ = ["gamma_ce", "linear_gamma_ce", "linear_tailr", "tailr"]


def _as_jax(*arrays):
    return [jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays]


class _FactorMask:
    """For a loss alone, the target mask as a 0/1 factor of ``exp(z - m)``, not a ``select``.

    XLA:CPU fuses ``exp(z - m)·mask`` into the row sum, as it does optax's
    ``logsumexp``, but materialises an N×C array for a ``select`` (or any
    comparison) before a reduction: with the factor, a loss-only program
    keeps no logits-sized temporary.  ``min(|j - y|, 1)`` is exact (0 on the
    target, 1 elsewhere; in the logits' float dtype while it holds every
    class index exactly) and needs no comparison; it is formed from the raw
    targets ``y`` (a row whose target is ignored or out of range is not
    counted, or is poisoned, whatever its entries).  With a gradient, whose
    assembly materialises ``exp(z - m)`` anyway, the plan's own mask (the
    factor would cost another N×C pass there).
    """

    def exp_off_target(self, z, m):
        if not self.value_only:
            return super().exp_off_target(z, m)
        n, dt = z.shape[-1], z.dtype
        if n < 2 ** (jnp.finfo(dt).nmant + 1):  # class indices exact in z's dtype: XLA:CPU fuses this form
            j, y = jnp.arange(n, dtype=dt), self.y.astype(dt)[..., None]
        else:
            j, y = jnp.arange(n, dtype=self.y.dtype), self.y[..., None]
        return jnp.exp(z - m) * jnp.minimum(jnp.abs(j - y), 1).astype(dt)


class _Fused(_FactorMask, _execution.Masked):
    """The whole row on this device (:class:`_FactorMask` for a loss alone)."""

    def __init__(self, xp, device, y, value_only):
        super().__init__(xp, device)
        self.y, self.value_only = y, value_only


class _FusedSharded(_FactorMask, _execution.Sharded):
    """This device's slice of the classes inside ``shard_map`` (mesh axis ``axis_name``).

    The slice is ``[i·C_local, (i+1)·C_local)`` for the device's index ``i``
    along the axis; the row maxima and sums are ``pmax``/``psum`` across it:
    O(N) values, never the logits.
    """

    def __init__(self, xp, device, y, value_only, axis_name, n_local):
        super().__init__(xp, device, offset=jax.lax.axis_index(axis_name) * n_local,
                         n_classes=jax.lax.axis_size(axis_name) * n_local,
                         max=functools.partial(jax.lax.pmax, axis_name=axis_name),
                         sum=functools.partial(jax.lax.psum, axis_name=axis_name))
        self.y, self.value_only = y - self.offset, value_only


def _run(logits, targets, opts, axis, *, v=None, gamma_dot=None, need_grad=True, need_dgamma=False, shard=None):
    """The core on JAX arrays: ``compute`` for the value and gradient, ``second_order`` beyond (a ``Second``).

    ``shard``: ``None``, or the mesh axis name the classes are split over
    (inside ``shard_map``: the row reductions run across it).
    """
    logits, targets = _as_jax(logits, targets)
    a = _validation.check_logits(logits, targets, opts, axis=axis)
    value_only = not (need_grad or need_dgamma or v is not None or gamma_dot is not None)
    p = (_Fused(a.xp, a.device, a.y, value_only) if shard is None
         else _FusedSharded(a.xp, a.device, a.y, value_only, shard, a.z.shape[-1]))
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
    # (the Hessian-vector product only where the gradient's tangent is wanted)
    out = _second(logits, targets, operands, v if need_grad else None, dgam if need_grad or need_dgamma else None,
                  static, axis, shard, (need_grad or v is not None, need_dgamma or dgam is not None))
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
    for a in arrays:  # JAX without x64 makes NumPy int64 targets int32: refuse a value that would wrap
        if isinstance(a, np.ndarray) and jax.dtypes.canonicalize_dtype(a.dtype) != a.dtype:
            _validation.check_narrowing("targets", a, jax.dtypes.canonicalize_dtype(a.dtype))
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
# The same three levels for logits = hidden @ weight.T + bias, chunk by chunk (`sizes`: (memory_budget,
# chunk_size)): `_linear_loss` (the value, gammace_ref.linear's loss-only pass) → its tangent from
# `_linear_first` (value and the three gradients in the fused pass; "none": the per-row tangents by
# `_linear_rows`) → whose tangent is the forward-mode derivative of `_by_chunks`, the same gradients
# written as a scan over chunk logits through `_first`, so that every second derivative is the exact
# logits Hessian chained through the (bilinear) layer.


def _linear_checked(hidden, weight, bias, targets, operands, static, sizes):
    memory_budget, chunk_size = sizes
    hidden, weight, bias, targets = _as_jax(hidden, weight, bias, targets)
    return _validation.check_linear(hidden, weight, bias, targets, _options.Options.join(static, operands),
                                    memory_budget=memory_budget, chunk_size=chunk_size)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6))
def _linear_loss(hidden, weight, bias, targets, operands, static, sizes):
    a = _linear_checked(hidden, weight, bias, targets, operands, static, sizes)
    return linear.fused(a, need_grad=False, scan=jax.lax.scan).loss


def _dot(a, b):
    return None if a is None or _zero(b) else jnp.sum(a * b.astype(a.dtype))


@functools.partial(_linear_loss.defjvp, symbolic_zeros=True)
def _linear_loss_jvp(static, sizes, primals, tangents):
    hidden, weight, bias, targets, operands = primals
    dh, dw, db, _, dops = tangents
    dgam = _gamma_tangent(static, operands, dops)
    if static.reduction == "none":
        return _linear_rows(hidden, weight, bias, targets, operands, static, sizes, tangents)
    need = (not _zero(dh), not _zero(dw), bias is not None and not _zero(db), dgam is not None)
    loss, gh, gw, gb, dgamma = _linear_first(hidden, weight, bias, targets, operands, static, sizes, need)
    dot = _add(_dot(gh, dh), _dot(gw, dw), _dot(gb, db), None if dgam is None else dgamma * dgam.astype(loss.dtype))
    return loss, (jnp.zeros_like(loss) if dot is None else dot.astype(loss.dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6, 7))
def _linear_first(hidden, weight, bias, targets, operands, static, sizes, need):
    """``(loss, d hidden, d weight, d bias, dL/dγ)`` of a reduced loss (``None`` where ``need`` says so)."""
    a = _linear_checked(hidden, weight, bias, targets, operands, static, sizes)
    out = linear.fused(a, need_grad=any(need[:3]), scan=jax.lax.scan)
    dgamma = _by_chunks(a, operands, static, "dgamma")[4] if need[3] else None
    grads = (out.hidden, out.weight, out.bias) if any(need[:3]) else (None, None, None)
    return (out.loss, *(g if n else None for g, n in zip(grads, need[:3])), dgamma)


@functools.partial(_linear_first.defjvp, symbolic_zeros=True)
def _linear_first_jvp(static, sizes, need, primals, tangents):
    hidden, weight, bias, targets, operands = primals
    a = _linear_checked(hidden, weight, bias, targets, operands, static, sizes)
    # the primal outputs from the primals alone (the fused pass), the tangents from the scan's jvp
    primal = _linear_first(hidden, weight, bias, targets, operands, static, sizes, need)
    dot = _linear_jvp(a, operands, static, tangents, "all")[1]
    return primal, (dot[0], *(_shaped(g, x, n) for g, x, n in zip(dot[1:4], (hidden, weight, bias), need[:3])),
                    dot[4] if need[3] else None)


def _linear_rows(hidden, weight, bias, targets, operands, static, sizes, tangents):
    """``(losses, their tangents)`` of ``reduction="none"``, chunk by chunk (reverse mode recomputes each chunk)."""
    a = _linear_checked(hidden, weight, bias, targets, operands, static, sizes)
    loss = linear.fused(a, need_grad=False, scan=jax.lax.scan).loss
    # (each chunk checkpointed: first-order reverse mode recomputes it, O(chunk) memory.  JAX cannot
    # linearize that loop twice: grad of grad here fails -- forward over reverse works, see the docs)
    dot = _linear_jvp(a, operands, static, tangents, "loss")[1][0]
    return loss, jnp.reshape(dot, a.batch_shape)


def _linear_jvp(a, operands, static, tangents, what):
    """``jax.jvp`` of :func:`_by_chunks` in ``(hidden, weight, bias, γ)`` along ``tangents`` (zeros where symbolic)."""
    dh, dw, db, _, dops = tangents
    dgam = _gamma_tangent(static, operands, dops)

    def f(h, w, b, gamma):
        return _by_chunks(dataclasses.replace(a, h=h, w=w, b=b), operands if gamma is None else (gamma, *operands[1:]),
                          static, what)

    def tangent(t, x):
        return None if x is None else jnp.zeros_like(x) if _zero(t) else jnp.reshape(t, x.shape).astype(x.dtype)

    return jax.jvp(f, (a.h, a.w, a.b, None if dgam is None else operands[0]),
                   (tangent(dh, a.h), tangent(dw, a.w), tangent(db, a.b), dgam))


def _shaped(g, like, needed):
    return None if not needed or g is None else jnp.reshape(g, jnp.shape(like)).astype(jnp.asarray(like).dtype)


def _by_chunks(a, operands, static, what="all"):
    """``(loss, d h (N, H), d weight, d bias, dL/dγ)`` by a scan over chunk logits through :func:`_first`.

    ``what``: ``"all"``, ``"dgamma"`` (loss and dL/dγ only) or ``"loss"``.
    Differentiable by JAX (the layer) and by ``_first``'s rule (the logits
    Hessian); each chunk is checkpointed, so reverse mode keeps chunk-sized
    residuals.  The rows are padded to whole chunks, uncounted
    (``where=False``, as ignored and masked rows).
    """
    h, w, b, y = a.h, a.w, a.b, a.y
    n, cs = h.shape[0], linear.chunk_size(a)
    k = max(1, -(-n // cs))
    pad = k * cs - n
    valid, _ = _core.targets(jnp, y, a.options, w.shape[0], None)
    chunk = static.replace(reduction="none" if static.reduction == "none" else "sum", ignore_index=None, where=None)
    # the chunk's operands: the batch's, with the chunk's rows as `where` (ignored rows are uncounted there)
    chunk_ops = dict(zip(_options.Options.OPERANDS, operands), ignore_index=None)
    grads = what == "all"

    @jax.checkpoint
    def body(carry, xs):
        h_c, y_c, m_c = xs
        z = h_c @ w.T if b is None else h_c @ w.T + b
        ops = tuple(m_c if name == "where" else chunk_ops[name] for name in _options.Options.OPERANDS)
        if what == "loss":  # (differentiated once for a first derivative: through `_loss`, as the logits path)
            return carry, (_loss(z, y_c, ops, chunk, -1, None), None, None)
        loss_c, g_c, d_c = _first(z, y_c, ops, chunk, -1, None, (grads, True))
        if not grads:
            return carry, (loss_c, None, d_c)
        gw, gb = carry
        return (gw + g_c.T @ h_c, None if gb is None else gb + jnp.sum(g_c, axis=0)), (loss_c, g_c @ w, d_c)

    init = (jnp.zeros_like(w), None if b is None else jnp.zeros_like(b)) if grads else (None, None)
    xs = (jnp.reshape(jnp.pad(h, ((0, pad), (0, 0))), (k, cs, -1)), jnp.reshape(jnp.pad(y, (0, pad)), (k, cs)),
          jnp.reshape(jnp.pad(valid, (0, pad)), (k, cs)))
    (gw, gb), (losses, gh, dg) = jax.lax.scan(body, init, xs)
    if static.reduction == "none":
        loss, dgamma = jnp.reshape(losses, (-1,))[:n], None if dg is None else jnp.reshape(dg, (-1,))[:n]
    else:
        loss, dgamma = jnp.sum(losses), None if dg is None else jnp.sum(dg)
    gh = None if gh is None else jnp.reshape(gh, (-1, h.shape[1]))[:n]
    if static.reduction == "mean":  # over the counted targets of the whole batch (none: 0)
        scale = 1.0 / jnp.maximum(jnp.sum(valid.astype(h.dtype)), 1.0)
        loss, dgamma, gh, gw, gb = (None if t is None else t * scale for t in (loss, dgamma, gh, gw, gb))
    return loss, gh, gw, gb, dgamma


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
