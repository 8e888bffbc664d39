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

From hidden states (:func:`linear_gamma_ce`, :func:`linear_tailr`): each rank
holds its slice of the ``lm_head`` weight (and bias), ``(C_local, H)``, and the
same hidden states; the logits are never materialised, not even the local
slice (:mod:`gammace_ref.linear`'s token and vocabulary blocks run on the
slice).  Per chunk of tokens the row statistics cross the ranks as above (an
all-reduce MAX and one SUM of O(rows) values); the gradient with respect to
``hidden`` is each rank's share, summed by one all-reduce of ``N × H`` values
(the all-reduce every vocabulary-parallel ``lm_head``'s backward does); the
``weight`` and ``bias`` gradients stay on their rank.

>>> loss = linear_gamma_ce(hidden, local_weight, targets, 0.1, offset=rank * C_local, n_classes=C)  # doctest: +SKIP

As ``F.cross_entropy``, target -100 is ignored by default.  The derivatives
are first order: a gradient differentiated again (MAML's outer step, a
gradient penalty) raises ``NotImplementedError``, as does a γ or threshold
tensor that requires grad (the logits functions of :mod:`gammace_ref.torch`
have both, exact).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import _api, _core, _docs, _execution, _validation, linear
from . import _autograd, _linear
from ._kernel import check_tensors
from ._kernel import xp as _xp

__all__ = ["gamma_ce", "linear_gamma_ce", "linear_tailr", "tailr"]


def _all_reduce(a, op, group):
    a = a.contiguous().clone()
    dist.all_reduce(a, op=op, group=group)
    return a


def _plan(offset, n_classes, group, device):
    return _execution.Sharded(_xp, device, offset=offset, n_classes=n_classes,
                              max=lambda a: _all_reduce(a, dist.ReduceOp.MAX, group),
                              sum=lambda a: _all_reduce(a, dist.ReduceOp.SUM, group))


SECOND_ORDER = ("gammace_ref.torch.distributed: second derivatives (a gradient taken with create_graph=True and "
                "differentiated again: MAML, gradient penalties, Hessian-vector products) are not implemented on "
                "the vocabulary-parallel path")


class _VocabParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, opts, offset, n_classes, group):
        if not isinstance(n_classes, int) or not 0 <= offset <= n_classes - logits.shape[-1]:
            raise ValueError(f"offset {offset} and n_classes {n_classes} do not hold a slice of "
                             f"{logits.shape[-1]} classes")
        a = _validation.check_logits(logits.detach(), targets, opts, axis=-1, xp=_xp)
        plan = _plan(offset, n_classes, group, a.z.device)
        loss, grad, _ = _core.compute(_xp, a.z, a.y, opts, need_grad=True, plan=plan)
        ctx.save_for_backward(_api.restore_layout(a, grad), logits)  # (logits: a graph built by backward leads to them)
        ctx.per_row = opts.reduction == "none"
        return loss

    @staticmethod
    @_autograd.first_order_only(SECOND_ORDER, lambda ctx: ctx.saved_tensors[1:])
    def backward(ctx, g):
        grad = ctx.saved_tensors[0]
        g = g.unsqueeze(-1) if ctx.per_row else g
        return (grad * g.to(grad.dtype),) + (None,) * 5


def gamma_ce(logits, targets, gamma, *, offset, n_classes, reduction="mean", ignore_index=-100,
             label_smoothing=0.0, where=None, group=None):
    """γ-CE of the full vocabulary from this rank's slice ``logits[..., C_local]`` (class axis last)."""
    opts = _autograd.options(locals())
    _autograd.no_followed_options("gammace_ref.torch.distributed", gamma)
    return _VocabParallel.apply(logits, targets, opts, offset, n_classes, group)


def tailr(logits, targets, gamma, threshold, *, offset, n_classes, reduction="mean", ignore_index=-100,
          label_smoothing=0.0, where=None, group=None):
    """TaiLr (weight ``clip(w, b, 1)``, computed once per row) from this rank's slice of the classes."""
    opts = _autograd.options(locals())
    _autograd.no_followed_options("gammace_ref.torch.distributed", gamma, threshold)
    return _VocabParallel.apply(logits, targets, opts, offset, n_classes, group)


# --------------------------------------------------------------------------- from hidden states


def _shard(offset, n_classes, n_local, group) -> linear.Shard:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or not 0 <= offset <= n_classes - n_local:
        raise ValueError(f"offset {offset} and n_classes {n_classes} do not hold a slice of {n_local} classes "
                         "(the rows of weight)")

    def combine(part, n):
        # A NaN maximum becomes +inf before the MAX (whatever order the ranks compare in): still poisoned.
        top = _all_reduce(torch.where(torch.isnan(part.top), torch.inf, part.top), dist.ReduceOp.MAX, group)
        sums = [u for u in _core.rebase(_xp, part, top, n) if u is not None]
        total = _all_reduce(torch.cat(sums, dim=-1), dist.ReduceOp.SUM, group)
        return _core.Partial(top, total[..., 0:1], total[..., 1:2], total[..., 2:3] if len(sums) == 3 else None)

    return linear.Shard(offset, n_classes, combine, lambda dh: _all_reduce(dh, dist.ReduceOp.SUM, group))


_RANK = dict(weight=("tensor, shape (C_local, H)", "This rank's rows ``[offset, offset + C_local)`` of the lm_head "
                                                   "weight."),
             bias=("tensor, shape (C_local,), or None", "This rank's slice of the bias."),
             offset=("int", "The first class of this rank's slice."),
             n_classes=("int", "C, the classes of all the ranks."),
             group=("ProcessGroup or None", "The ranks that share the vocabulary (default: all)."),
             ignore_index=_autograd.IGNORE_DOC)


@_docs.shared("loss", **_RANK)
def linear_gamma_ce(hidden, weight, targets, gamma, *, offset, n_classes, bias=None, reduction="mean",
                    ignore_index=-100, label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None,
                    group=None, compiled=True):
    """γ-CE of the full vocabulary from hidden states and this rank's slice of the lm_head (vocabulary-parallel).

    Every rank passes the same ``hidden`` and ``targets`` (global class
    indices) and returns the same loss; ``backward()`` gives ``hidden`` the
    full gradient and ``weight``/``bias`` this rank's slice of theirs.
    """
    opts = _autograd.options(locals())
    _autograd.no_followed_options("gammace_ref.torch.distributed.linear_*", gamma)
    check_tensors([("weight", weight)])
    return _linear.run(hidden, weight, bias, targets, opts, memory_budget, chunk_size, compiled,
                       shard=_shard(offset, n_classes, weight.shape[0], group))


@_docs.shared("loss", **_RANK)
def linear_tailr(hidden, weight, targets, gamma, threshold, *, offset, n_classes, bias=None, reduction="mean",
                 ignore_index=-100, label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None,
                 group=None, compiled=True):
    """TaiLr (weight ``clip(w, b, 1)``, once per row) from hidden states and this rank's slice of the lm_head.
    """
    opts = _autograd.options(locals())
    _autograd.no_followed_options("gammace_ref.torch.distributed.linear_*", gamma, threshold)
    check_tensors([("weight", weight)])
    return _linear.run(hidden, weight, bias, targets, opts, memory_budget, chunk_size, compiled,
                       shard=_shard(offset, n_classes, weight.shape[0], group))
