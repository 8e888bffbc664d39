"""The loss on logits as ``torch.autograd.Function`` s: exact first and second derivatives, in both modes.

Three functions, each the derivative of the one before:

* :class:`_Loss` -- value and gradient of the core in one pass (the compiled
  kernel); ``backward`` hands over the stored gradient (scaled by the
  upstream gradient), ``jvp`` is ``⟨∇L, ż⟩ + ∂L/∂γ·γ̇``.
* :class:`_First` -- the gradient (and ∂L/∂γ) as a differentiable function of
  the logits (and γ): what ``_Loss.backward`` returns when a graph is being
  built (``create_graph=True``, ``torch.func``); its ``backward`` and ``jvp``
  are the closed-form Hessian-vector product (the Hessian is symmetric).
* :class:`_Hvp` -- that product (:func:`gammace_ref._core.second_order`);
  differentiating it (a third derivative) raises.

The fast path -- ``loss.backward()`` without ``create_graph`` -- is the one
it always was: no recomputation, no N×C multiply for an upstream gradient of
1 on CPU.  ``logits`` are kept for a second derivative (a reference, as any
autograd function keeps its inputs).
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from .. import _api, _validation
from ._kernel import is_traced, run, xp

_THIRD = ("gammace_ref.torch: third and higher derivatives of the loss are not implemented (the first and "
          "second are exact; a third would differentiate the closed-form Hessian-vector product)")


#: torch's convention (``F.cross_entropy``): -100 is ignored by default.
IGNORE_DOC = ("int or None",
              "Targets equal to it count for nothing: no loss, no gradient, not in the mean's denominator. The "
              "default is ``F.cross_entropy``'s -100 (the core's functions default to ``None``: every target "
              "counts, and a negative target is an error).")


def stored_times(stored, g):
    """The stored gradients scaled by the upstream scalar ``g`` (``None`` entries stay ``None``).

    ``loss.backward()`` on a reduced loss sends ``g = 1``: the stored gradients
    are then the answer, handed over without an N×C multiply (and, once
    released, without a copy).
    """
    if (g.device.type == "cpu" and not g.requires_grad and not is_traced(g)
            and not torch._C._functorch.is_functorch_wrapped_tensor(g) and float(g) == 1.0):
        return tuple(stored)
    return tuple(None if t is None else t * g.to(t.dtype) for t in stored)


class _NotTwice(torch.autograd.Function):
    """Identity on the gradients of a first-order-only backward; differentiating them raises ``message``.

    Inputs: ``n`` (how many inputs follow before the gradients), those inputs
    (the tensors the gradients depend on: the graph leads back to them), the
    message, the gradients.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(n, *args):
        return tuple(t.view_as(t) for t in args[n + 1:])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.message = inputs[inputs[0] + 1]

    @staticmethod
    def backward(ctx, *_):
        raise NotImplementedError(ctx.message)

    @staticmethod
    def jvp(ctx, *_):
        raise NotImplementedError(ctx.message)


def first_order_only(message, inputs):
    """Decorate an ``autograd.Function.backward`` whose result is exact to first order only.

    ``torch.autograd.function.once_differentiable`` raises for a second
    derivative only where the upstream gradient itself requires grad: a
    MAML step (``torch.autograd.grad(loss, params, create_graph=True)``,
    upstream 1) would get gradients without history and a silently
    first-order outer gradient.  Here, whenever a graph is being built, the
    gradients come out of :class:`_NotTwice` connected to ``inputs(ctx)``
    (the tensors they depend on): first-order uses (``torch.func.grad``
    included) see them as they are, differentiating them raises
    ``NotImplementedError(message)``.
    """
    def decorate(backward):
        def wrapper(ctx, *grads_out):
            with torch.no_grad():
                out = backward(ctx, *grads_out)
            if not torch.is_grad_enabled():
                return out
            anchors = [t for t in inputs(ctx) if isinstance(t, torch.Tensor) and t.requires_grad]
            where = [i for i, t in enumerate(out) if isinstance(t, torch.Tensor)]
            if not anchors or not where:
                return out
            wrapped = _NotTwice.apply(len(anchors), *anchors, message, *(out[i] for i in where))
            out = list(out)
            for i, t in zip(where, wrapped):
                out[i] = t
            return tuple(out)
        wrapper.__name__, wrapper.__doc__ = backward.__name__, backward.__doc__
        return wrapper
    return decorate


def no_followed_options(what, *values):
    """Raise ``NotImplementedError`` where a γ/threshold tensor is followed by autograd but ``what`` gives it no gradient."""
    if any(differentiated(v) for v in values):
        raise NotImplementedError(f"{what}: gradients with respect to gamma or threshold are not implemented here "
                                  "(a tensor that requires grad would get none); use gammace_ref.torch.gamma_ce / "
                                  "tailr on logits, which give the exact dL/dγ")


def differentiated(t) -> bool:
    """``t`` is a tensor that autograd follows (backward with grad enabled, or forward mode)."""
    if not isinstance(t, torch.Tensor):
        return False
    return (t.requires_grad and torch.is_grad_enabled()) or fwAD.unpack_dual(t).tangent is not None


def _gamma_part(opts, gamma):
    """γ is an input autograd follows and the loss depends on it (γ-CE: TaiLr's W is a constant)."""
    return gamma is not None and not opts.tailr


def _with(opts, gamma, threshold=None):
    """``opts`` holding this function's own ``gamma``/``threshold`` inputs (as a transform unwrapped them)."""
    if gamma is not None:
        opts = opts.replace(gamma=gamma)
    if threshold is not None:
        opts = opts.replace(threshold=threshold)
    return opts


def _no_reverse_over_forward():
    """Raise under ``torch.func`` reverse mode over this forward-mode rule: functorch would not see its ops.

    (``torch.func.jacrev`` of ``jacfwd``, ``grad`` of ``jvp``: functorch runs an
    ``autograd.Function``'s ``jvp`` outside the outer ``grad`` level, so its
    derivative would silently be 0.  ``torch.func.hessian`` -- forward over
    reverse -- and plain autograd over ``torch.autograd.forward_ad`` work.)
    """
    from torch._functorch import pyfunctorch

    grad_level = torch._C._functorch.TransformType.Grad
    if any(i.key() == grad_level for i in pyfunctorch.retrieve_all_functorch_interpreters()):
        raise NotImplementedError("gammace_ref.torch: torch.func reverse mode over forward mode (jacrev of jacfwd, "
                                  "grad of jvp) is not supported (functorch does not differentiate an "
                                  "autograd.Function's jvp rule); use forward over reverse (torch.func.hessian, "
                                  "jvp of grad) or torch.autograd.grad(..., create_graph=True)")


def _contract(a, b, class_axis):
    """``⟨a, b⟩`` per row along ``class_axis`` (``reduction="none"``), or in all (``None``)."""
    prod = a * b.to(a.dtype)
    return prod.sum() if class_axis is None else prod.sum(dim=class_axis)


def _times_upstream(t, g, class_axis):
    """``t`` scaled by the upstream gradient ``g`` (per row along ``class_axis``, or a scalar)."""
    if class_axis is not None:
        return t * g.unsqueeze(class_axis).to(t.dtype)
    return stored_times((t,), g)[0]


class _Loss(torch.autograd.Function):
    """Loss and gradient (and dL/dγ where γ is followed) of the core in one pass.

    Inputs: ``logits, targets, gamma, threshold`` (``gamma``/``threshold``:
    the option's tensor where autograd follows it, else ``None``), ``opts``,
    ``axis``, ``compiled``.  Outputs ``(loss, grad, dgamma)``, the last two
    not differentiable (``dgamma`` a 0-d placeholder when not computed).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, targets, gamma, threshold, opts, axis, compiled):
        opts = _with(opts, gamma, threshold)
        logits = logits.detach()  # (no graph is built here: the eager core may then work in place)
        if _gamma_part(opts, gamma):
            out = _api.second_order(logits, targets, opts, axis=axis, need_dgamma=True, xp=xp,
                                    traced=is_traced(logits, targets))
            return out.loss, out.grad, out.dgamma
        loss, grad = run(logits, targets, opts, axis, compiled, need_grad=True)
        return loss, grad, loss.new_zeros(())

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, targets, gamma, threshold, opts, axis, _ = inputs
        _, grad, dgamma = output
        ctx.mark_non_differentiable(grad, dgamma)
        ctx.set_materialize_grads(False)  # no N×C zeros for the unused outputs' gradients
        ctx.save_for_backward(grad, dgamma, logits, targets, gamma, threshold)
        ctx.save_for_forward(grad, dgamma, logits, targets, gamma, threshold)
        ctx.opts, ctx.axis = opts, axis
        # reduction="none": one loss per target, broadcast back along the class axis.
        ctx.class_axis = axis % logits.ndim if opts.reduction == "none" else None

    @staticmethod
    def backward(ctx, g, *_):
        nothing = (None,) * 3
        if g is None:  # only the unused outputs were used
            return (None,) * 7
        grad, dgamma, logits, targets, gamma, threshold = ctx.saved_tensors
        need_z, _, need_g, need_b = ctx.needs_input_grad[:4]
        gamma_part = _gamma_part(ctx.opts, gamma) and need_g
        if torch.is_grad_enabled():  # a graph is built: the gradient must itself be differentiable
            grad, dgamma = _first().apply(logits, targets, gamma if gamma_part else None, threshold, grad, dgamma,
                                        ctx.opts, ctx.axis)
        dz = _times_upstream(grad, g, ctx.class_axis) if need_z else None
        dg = None
        if need_g:  # TaiLr holds W constant: 0
            dg = ((dgamma * g.to(dgamma.dtype)).sum() if gamma_part else torch.zeros_like(gamma)).to(gamma.dtype)
        db = torch.zeros_like(threshold) if need_b else None
        return (dz, None, dg, db, *nothing)

class _LossFwd(_Loss):
    """:class:`_Loss` with forward mode (outside ``torch.compile``, whose Dynamo refuses a custom ``jvp``)."""

    @staticmethod
    def jvp(ctx, z_t, _, gamma_t, threshold_t, *__):
        grad, dgamma, logits, targets, gamma, threshold = ctx.saved_tensors
        _no_reverse_over_forward()
        if torch.is_grad_enabled() and (logits.requires_grad or (gamma is not None and gamma.requires_grad)):
            # plain autograd over forward mode: the tangent's gradient is the Hessian's
            grad, dgamma = _first().apply(logits, targets, gamma if _gamma_part(ctx.opts, gamma) else None,
                                        threshold, grad, dgamma, ctx.opts, ctx.axis)
        loss_t = None
        if z_t is not None:
            loss_t = _contract(grad, z_t, ctx.class_axis)
        if gamma_t is not None and not ctx.opts.tailr:
            part = dgamma * gamma_t.to(dgamma.dtype)
            loss_t = part if loss_t is None else loss_t + part
        if loss_t is None:
            loss_t = torch.zeros_like(dgamma if ctx.class_axis is None else grad.sum(dim=ctx.class_axis))
        return loss_t, None, None


class _First(torch.autograd.Function):
    """``(grad, dgamma)`` of the loss as a differentiable function of ``logits`` and ``gamma``.

    The forward pass hands over the values ``_Loss`` computed; the backward
    pass and ``jvp`` are the Hessian(-vector) products of :class:`_Hvp`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, targets, gamma, threshold, grad, dgamma, opts, axis):
        return grad.clone(), dgamma.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, targets, gamma, threshold, _, _, opts, axis = inputs
        ctx.save_for_backward(logits, targets, gamma, threshold)
        ctx.save_for_forward(logits, targets, gamma, threshold)
        ctx.opts, ctx.axis = opts, axis

    @staticmethod
    def backward(ctx, u, u_gamma):
        logits, targets, gamma, threshold = ctx.saved_tensors
        u_gamma = u_gamma if _gamma_part(ctx.opts, gamma) else None
        hv, dd = _hvp().apply(logits, targets, gamma, threshold, u, u_gamma, ctx.opts, ctx.axis)
        return (hv if ctx.needs_input_grad[0] else None, None,
                dd.to(gamma.dtype) if gamma is not None and ctx.needs_input_grad[2] else None,
                torch.zeros_like(threshold) if threshold is not None and ctx.needs_input_grad[3] else None,
                None, None, None, None)

class _FirstFwd(_First):
    """:class:`_First` with forward mode (outside ``torch.compile``)."""

    @staticmethod
    def jvp(ctx, z_t, _, gamma_t, *__):
        logits, targets, gamma, threshold = ctx.saved_tensors
        _no_reverse_over_forward()
        gamma_t = gamma_t if _gamma_part(ctx.opts, gamma) else None
        return _hvp().apply(logits, targets, gamma, threshold, z_t, gamma_t, ctx.opts, ctx.axis)


class _Hvp(torch.autograd.Function):
    """``(∇²L·v + ∂∇L/∂γ·γ̇, ⟨∂∇L/∂γ, v⟩ + ∂²L/∂γ²·γ̇)`` from the core; not differentiable (a 3rd derivative).

    Its ``backward`` raises, as :class:`_HvpFwd`'s ``jvp`` does.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, targets, gamma, threshold, v, gamma_dot, opts, axis):
        opts = _with(opts, gamma, threshold)
        gamma_part = _gamma_part(opts, gamma)
        out = _api.second_order(logits, targets, opts, axis=axis, v=v,
                                gamma_dot=gamma_dot if gamma_part else None, need_grad=False,
                                need_dgamma=gamma_part, xp=xp, traced=is_traced(logits, targets, v))
        hv = out.hvp if out.hvp is not None else torch.zeros_like(logits)
        dd = out.dgamma_dot if out.dgamma_dot is not None else out.loss.new_zeros(())
        return hv, dd

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *_):
        raise NotImplementedError(_THIRD)


class _HvpFwd(_Hvp):
    """:class:`_Hvp` whose forward mode raises with the reason (outside ``torch.compile``)."""

    @staticmethod
    def jvp(ctx, *_):
        raise NotImplementedError(_THIRD)


def _loss():
    return _Loss if torch.compiler.is_dynamo_compiling() else _LossFwd


def _first():
    return _First if torch.compiler.is_dynamo_compiling() else _FirstFwd


def _hvp():
    return _Hvp if torch.compiler.is_dynamo_compiling() else _HvpFwd


def _followed(opts, gamma, threshold):
    """``(opts, gamma, threshold)``: the γ and b tensors autograd follows (else ``None``), in ``opts`` too.

    ``gamma``, ``threshold``: the caller's arguments (the options hold their
    checked values, a Python float for a tensor that could be read).
    """
    gamma = gamma if differentiated(gamma) else None
    threshold = threshold if differentiated(threshold) else None
    if gamma is not None:
        opts = opts.replace(gamma=gamma)
    if threshold is not None:
        opts = opts.replace(threshold=threshold)
    return opts, gamma, threshold


def loss(logits, targets, opts, axis, compiled, gamma=None, threshold=None):
    """The loss of ``opts`` on ``logits``: through :class:`_Loss` where autograd follows an input."""
    opts, gamma, threshold = _followed(opts, gamma, threshold)
    if differentiated(logits) or gamma is not None or threshold is not None:
        return _loss().apply(logits, targets, gamma, threshold, opts, axis, compiled)[0]
    return run(logits, targets, opts, axis, compiled, need_grad=False)[0]


def value_and_grad(logits, targets, opts, axis, compiled=False, gamma=None, threshold=None):
    """``(loss, grad)``, each differentiable with the exact derivatives (for ``gammace_ref``'s routing)."""
    opts, gamma, threshold = _followed(opts, gamma, threshold)
    if not (differentiated(logits) or gamma is not None or threshold is not None):
        return run(logits, targets, opts, axis, compiled, need_grad=True)
    value, grad, dgamma = _loss().apply(logits, targets, gamma, threshold, opts, axis, compiled)
    gamma = gamma if _gamma_part(opts, gamma) else None
    return value, _first().apply(logits, targets, gamma, threshold, grad, dgamma, opts, axis)[0]


def options(arguments: dict):
    """The checked options of a function's ``arguments`` (its ``locals()``), γ and threshold tensors included.

    Such a tensor is read detached (torch warns on reading one autograd
    follows), and not read at all while a compiler traces it: it then stays
    a traced operand (a value outside [0, 1] gives NaN, as in the core).
    """
    args, traced = dict(arguments), {}
    for name in ("gamma", "threshold"):
        value = args.get(name)
        if isinstance(value, torch.Tensor):
            if value.ndim != 0:
                raise ValueError(f"{name} must be a scalar or a 0-d array, got shape {tuple(value.shape)}")
            if torch.compiler.is_dynamo_compiling():
                traced[name], args[name] = value, 0.0
            else:
                args[name] = value.detach()
    opts = _validation.options_of(args)
    return opts.replace(**traced) if traced else opts


def from_core(what, arguments):
    """``gammace_ref``'s functions on tensors autograd follows: through these functions (eagerly).

    ``arguments``: the core function's own.  ``None`` where nothing is
    followed (the core then runs as it is).  ``"hvp"`` gives the product,
    whose derivative (a third one) raises; ``"dgamma"`` a dL/dγ differentiable
    in the logits and γ.
    """
    logits, gamma, threshold, v = (arguments.get(k) for k in ("logits", "gamma", "threshold", "v"))
    if not any(differentiated(t) for t in (logits, gamma, threshold, v)):
        return None
    targets, axis, opts = arguments["targets"], arguments["axis"], options(arguments)
    if what == "loss":
        return loss(logits, targets, opts, axis, False, gamma=gamma, threshold=threshold)
    if what == "value_and_grad":
        return value_and_grad(logits, targets, opts, axis, False, gamma=gamma, threshold=threshold)
    opts, gamma, threshold = _followed(opts, gamma, threshold)
    if what == "hvp":
        return _hvp().apply(logits, targets, gamma, threshold, v, None, opts, axis)[0]
    # "dgamma": γ as an input even where it is a number, so that d(dL/dγ)/dz is the mixed derivative
    gamma = torch.as_tensor(opts.gamma, dtype=torch.float64, device=logits.device) if gamma is None else gamma
    value, grad, dgamma = _loss().apply(logits, targets, gamma, threshold, opts.replace(gamma=gamma), axis, False)
    return _first().apply(logits, targets, gamma, threshold, grad, dgamma, opts.replace(gamma=gamma), axis)[1]
