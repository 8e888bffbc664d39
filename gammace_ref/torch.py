"""γ-CE and TaiLr inside PyTorch autograd, with the core's analytic gradient.

``gamma_ce`` and ``tailr`` take the core's arguments and return a loss whose
``backward()`` uses the exact gradient computed with the value (no autograd
graph over the N×C softmax).  ``GammaCELoss`` / ``TaiLrLoss`` are the
``nn.CrossEntropyLoss``-style modules (class axis 1, ``ignore_index=-100``).

By default the core runs compiled with ``torch.compile`` (dynamic shapes,
one compilation per dtype/layout, eager fallback when compilation is not
available); ``compiled=False`` runs it eagerly.  Inside a region the caller
compiles (``torch.compile(fullgraph=True)``) nothing is read back to the
host: an invalid target makes its row NaN instead of raising.
"""

from __future__ import annotations

import functools

import array_api_compat.torch as _xp
import torch

from . import _core, _validation

__all__ = ["GammaCELoss", "TaiLrLoss", "gamma_ce", "tailr"]


def _kernel(z, y, gamma, threshold, tailr, need_grad, reduction, ignore_index, label_smoothing):
    return _core.compute(_xp, z, y, gamma, threshold, tailr=tailr, need_grad=need_grad, reduction=reduction,
                         ignore_index=ignore_index, label_smoothing=label_smoothing, check_values=False)


@functools.cache
def _compiled_kernel():
    return torch.compile(_kernel, dynamic=True)


def _scalar(v, like):
    # γ and b as 0-d float64 tensors: a compiled kernel traces them instead of
    # recompiling for each value (a γ schedule changes γ every step).
    return torch.as_tensor(v, dtype=torch.float64, device=like.device)


def _run(logits, targets, gamma, threshold, tailr, axis, reduction, ignore_index, label_smoothing, compiled):
    a = _validation.check(logits.detach(), targets, gamma, threshold, axis=axis, reduction=reduction,
                          ignore_index=ignore_index, label_smoothing=label_smoothing)
    need_grad = logits.requires_grad
    tracing = torch.compiler.is_compiling()
    if compiled and not tracing:
        try:
            loss, grad = _compiled_kernel()(a.z, a.y, _scalar(a.gamma, a.z), _scalar(a.threshold, a.z), tailr,
                                            need_grad, a.reduction, a.ignore_index, a.label_smoothing)
        except Exception as exc:  # no C++ compiler, unsupported platform, ...: stay correct, eagerly
            _warn_fallback(exc)
            compiled = False
        else:
            if bool(torch.isnan(loss).any()):  # an invalid row: let the eager checks name it
                _core.compute(a.xp, a.z, a.y, a.gamma, a.threshold, tailr=tailr, need_grad=False,
                              reduction=a.reduction, ignore_index=a.ignore_index,
                              label_smoothing=a.label_smoothing)
    if not compiled or tracing:
        loss, grad = _core.compute(a.xp, a.z, a.y, a.gamma, a.threshold, tailr=tailr, need_grad=need_grad,
                                   reduction=a.reduction, ignore_index=a.ignore_index,
                                   label_smoothing=a.label_smoothing, check_values=not tracing)
    return loss, (None if grad is None else _core.restore_layout(a, grad)), a.axis


@functools.cache
def _warn_fallback(exc):
    import warnings

    warnings.warn(f"gammace_ref.torch: torch.compile unavailable ({type(exc).__name__}: {exc}); "
                  "running the core eagerly", RuntimeWarning, stacklevel=3)


class _Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, gamma, threshold, tailr, axis, reduction, ignore_index, label_smoothing,
                compiled):
        loss, grad, ctx.axis = _run(logits, targets, gamma, threshold, tailr, axis, reduction, ignore_index,
                                    label_smoothing, compiled)
        ctx.per_row = reduction == "none"
        if grad is not None:
            ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        if ctx.per_row:
            g = g.unsqueeze(ctx.axis)
        return (grad * g.to(grad.dtype),) + (None,) * 9


def gamma_ce(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0,
             compiled=True):
    """γ-CE loss of :func:`gammace_ref.gamma_ce` as a differentiable torch op."""
    return _Loss.apply(logits, targets, gamma, 0.0, False, axis, reduction, ignore_index, label_smoothing,
                       compiled)


def tailr(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None,
          label_smoothing=0.0, compiled=True):
    """TaiLr objective of :func:`gammace_ref.tailr` as a differentiable torch op (the paper's gradient)."""
    return _Loss.apply(logits, targets, gamma, threshold, True, axis, reduction, ignore_index, label_smoothing,
                       compiled)


class GammaCELoss(torch.nn.Module):
    """``nn.CrossEntropyLoss``-style γ-CE: input ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.

    Parameters follow torch: ``ignore_index=-100``, ``reduction="mean"``,
    ``label_smoothing=0.0``; plus ``gamma`` in [0, 1].
    """

    def __init__(self, gamma, *, ignore_index=-100, reduction="mean", label_smoothing=0.0, compiled=True):
        super().__init__()
        self.gamma = _validation.unit_interval("gamma", gamma)
        _validation.smoothing(label_smoothing)
        if reduction not in _validation.REDUCTIONS:
            raise ValueError(f"reduction must be one of {_validation.REDUCTIONS}, got {reduction!r}")
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.compiled = label_smoothing, compiled

    def _kw(self, input):
        return dict(axis=1 if input.ndim > 1 else 0, reduction=self.reduction, ignore_index=self.ignore_index,
                    label_smoothing=self.label_smoothing, compiled=self.compiled)

    def forward(self, input, target):
        return gamma_ce(input, target, self.gamma, **self._kw(input))

    def extra_repr(self):
        return f"gamma={self.gamma}, reduction={self.reduction!r}, ignore_index={self.ignore_index}"


class TaiLrLoss(GammaCELoss):
    """``nn.CrossEntropyLoss``-style TaiLr objective with weight ``clip(w, threshold, 1)``."""

    def __init__(self, gamma, threshold, **kwargs):
        super().__init__(gamma, **kwargs)
        self.threshold = _validation.unit_interval("threshold", threshold)

    def forward(self, input, target):
        return tailr(input, target, self.gamma, self.threshold, **self._kw(input))

    def extra_repr(self):
        return super().extra_repr() + f", threshold={self.threshold}"
