""":mod:`gammace_ref.linear` in torch autograd: the loss from hidden states, chunk by chunk."""

from __future__ import annotations

import torch

from .. import linear
from ._autograd import first_order_only, stored_times
from ._kernel import check_tensors


SECOND_ORDER = ("gammace_ref.torch.linear_*: second derivatives (a gradient taken with create_graph=True and "
                "differentiated again: MAML, gradient penalties, Hessian-vector products) are not implemented on "
                "the hidden-states path; use the logits functions gammace_ref.torch.gamma_ce / tailr, whose second "
                "derivatives are exact")


class _Linear(torch.autograd.Function):
    """:mod:`gammace_ref.linear` in autograd: the gradients come with the loss, chunk by chunk.

    ``"mean"``/``"sum"``: ``forward`` computes the loss and the three
    gradients (never N×C logits); ``backward`` scales them by the upstream
    scalar.  ``"none"``: ``forward`` computes the losses only and
    ``backward`` runs the chunks again with the upstream per-target weights.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, opts, memory_budget, chunk_size):
        ctx.opts, ctx.plan = opts, dict(memory_budget=memory_budget, chunk_size=chunk_size)
        ctx.has_bias = bias is not None
        per_row = opts.reduction == "none"
        out = linear.run(hidden, weight, bias, targets, opts, need_grad=not per_row, **ctx.plan)
        # "none": the backward pass runs the chunks again with the per-target cotangent.
        # (and the inputs: a graph built by the backward pass leads back to them)
        ctx.save_for_backward(hidden, weight, bias, targets, *(() if per_row else (out.hidden, out.weight, out.bias)))
        return out.loss

    @staticmethod
    @first_order_only(SECOND_ORDER, lambda ctx: ctx.saved_tensors[:3])
    def backward(ctx, g):
        if ctx.opts.reduction == "none":
            hidden, weight, bias, targets = ctx.saved_tensors
            out = linear.run(hidden, weight, bias if ctx.has_bias else None, targets, ctx.opts, cotangent=g,
                             **ctx.plan)
            grads = (out.hidden, out.weight, out.bias)
        else:
            grads = stored_times(ctx.saved_tensors[4:], g)
        grads = tuple(t if need else None for t, need in zip(grads, ctx.needs_input_grad[:3]))
        return grads + (None,) * 4


def run(hidden, weight, bias, targets, opts, memory_budget, chunk_size):
    check_tensors([("hidden", hidden), ("weight", weight), ("bias", bias), ("targets", targets)])
    tracked = any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if torch.is_grad_enabled() and tracked:
        return _Linear.apply(hidden, weight, bias, targets, opts, memory_budget, chunk_size)
    return linear.run(hidden, weight, bias, targets, opts, need_grad=False, memory_budget=memory_budget,
                      chunk_size=chunk_size).loss
