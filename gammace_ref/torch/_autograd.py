"""The loss on logits as a ``torch.autograd.Function``: value and gradient in one pass, ``backward`` scales."""

from __future__ import annotations

import torch

from ._kernel import is_traced, run


def stored_times(stored, g):
    """The stored gradients scaled by the upstream scalar ``g`` (``None`` entries stay ``None``).

    ``loss.backward()`` on a reduced loss sends ``g = 1``: the stored gradients
    are then the answer, handed over without an N×C multiply (and, once
    released, without a copy).
    """
    if (g.device.type == "cpu" and not is_traced(g)
            and not torch._C._functorch.is_functorch_wrapped_tensor(g) and float(g) == 1.0):
        return tuple(stored)
    return tuple(None if t is None else t * g.to(t.dtype) for t in stored)


class _Loss(torch.autograd.Function):
    """Loss and gradient of the core in one pass; ``backward`` only scales the stored gradient."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, targets, opts, axis, compiled):
        return run(logits, targets, opts, axis, compiled, need_grad=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, _, opts, axis, _ = inputs
        grad = output[1]
        ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)  # no N×C zeros for the unused second output's gradient
        ctx.save_for_backward(grad)
        # reduction="none": one loss per target, broadcast back along the class axis.
        ctx.class_axis = axis % logits.ndim if opts.reduction == "none" else None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, _):
        nothing = (None,) * 4
        if g is None:  # only the gradient output was used
            return (None, *nothing)
        if ctx.class_axis is not None:
            (grad,) = ctx.saved_tensors
            return (grad * g.unsqueeze(ctx.class_axis).to(grad.dtype), *nothing)
        return (*stored_times(ctx.saved_tensors, g), *nothing)


def loss(logits, targets, opts, axis, compiled):
    if torch.is_grad_enabled() and isinstance(logits, torch.Tensor) and logits.requires_grad:
        return _Loss.apply(logits, targets, opts, axis, compiled)[0]
    return run(logits, targets, opts, axis, compiled, need_grad=False)[0]
