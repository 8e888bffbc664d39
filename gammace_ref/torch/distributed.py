"""Vocabulary-parallel γ-CE and TaiLr on ``torch.distributed`` (Megatron-style).

Each rank holds a slice of the classes: ``logits`` is ``(..., C_local)`` with
this rank's classes ``[offset, offset + C_local)`` of ``n_classes``; the
targets are global class indices, the same on every rank.  The core runs on
the slice with its row reductions made across ranks (:class:`gammace_ref._execution.Sharded`):
an all-reduce (MAX) of the row maxima, then one all-reduce (SUM) of three
values per row -- ``R = Σ_{j≠y} e_j``, the target logit (held by one rank)
and, with label smoothing, ``Σ_j (m - z_j)``.  That is O(N) floats per step,
never O(N·C); the weight ``clip(w, b, 1)`` is then computed once per row, the
same on every rank.  Every rank returns the same loss and its own slice of
the gradient, which ``backward()`` hands to autograd.

>>> loss = gamma_ce(local_logits, targets, 0.1, offset=rank * C_local, n_classes=C)  # doctest: +SKIP
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import _api, _core, _execution, _validation
from ._kernel import xp as _xp

__all__ = ["gamma_ce", "tailr"]


def _plan(offset, n_classes, group, device):
    def reduce(op):
        def f(a):
            a = a.contiguous().clone()
            dist.all_reduce(a, op=op, group=group)
            return a
        return f

    return _execution.Sharded(_xp, device, offset=offset, n_classes=n_classes, max=reduce(dist.ReduceOp.MAX),
                              sum=reduce(dist.ReduceOp.SUM))


class _VocabParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, opts, offset, n_classes, group):
        if not isinstance(n_classes, int) or not 0 <= offset <= n_classes - logits.shape[-1]:
            raise ValueError(f"offset {offset} and n_classes {n_classes} do not hold a slice of "
                             f"{logits.shape[-1]} classes")
        a = _validation.check_logits(logits.detach(), targets, opts, axis=-1, xp=_xp)
        plan = _plan(offset, n_classes, group, a.z.device)
        loss, grad, _ = _core.compute(_xp, a.z, a.y, opts, need_grad=True, plan=plan)
        ctx.save_for_backward(_api.restore_layout(a, grad))
        ctx.per_row = opts.reduction == "none"
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        g = g.unsqueeze(-1) if ctx.per_row else g
        return (grad * g.to(grad.dtype),) + (None,) * 5


def gamma_ce(logits, targets, gamma, *, offset, n_classes, reduction="mean", ignore_index=None,
             label_smoothing=0.0, where=None, group=None):
    """γ-CE of the full vocabulary from this rank's slice ``logits[..., C_local]`` (class axis last)."""
    opts = _validation.options_of(locals())
    return _VocabParallel.apply(logits, targets, opts, offset, n_classes, group)


def tailr(logits, targets, gamma, threshold, *, offset, n_classes, reduction="mean", ignore_index=None,
          label_smoothing=0.0, where=None, group=None):
    """TaiLr (weight ``clip(w, b, 1)``, computed once per row) from this rank's slice of the classes."""
    opts = _validation.options_of(locals())
    return _VocabParallel.apply(logits, targets, opts, offset, n_classes, group)
