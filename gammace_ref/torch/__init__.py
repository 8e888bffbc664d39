"""γ-CE and TaiLr inside PyTorch autograd, with the core's analytic gradient.

``gamma_ce`` and ``tailr`` take the core's arguments and return a loss whose
``backward()`` uses the exact gradient computed with the value (no autograd
graph over the N×C softmax).  As ``F.cross_entropy``, they ignore the target
-100 by default (``ignore_index=-100``; the core's functions default to
``None``).  ``GammaCELoss`` / ``TaiLrLoss`` are the
``nn.CrossEntropyLoss``-style modules (class axis 1, ``ignore_index=-100``).

By default the core runs compiled with ``torch.compile``: one compilation
per dtype, number of dimensions and set of options that shape the graph
(``reduction``, TaiLr or not, whether ``ignore_index``, ``label_smoothing``
or ``where`` is given, gradient or value only), each announced at INFO on
the ``gammace_ref`` logger; γ, b, ε and the ignore index are traced, and
every batch shape and number of classes reuse the graph.  ``warmup``
compiles ahead.  If compiling fails once (no C++ compiler, ...) it warns and
runs eagerly from then on.  ``compiled=False``
runs it eagerly.  Inside a region the caller compiles
(``torch.compile(fullgraph=True)``) or batches (``torch.func.vmap``) nothing
is read back to the host: an invalid target makes its row NaN instead of
raising.

Every first and second derivative is exact (the closed forms of
:func:`gammace_ref.gamma_ce_hvp`, in O(N·C)): double backward
(``torch.autograd.grad(..., create_graph=True)``: MAML, gradient penalties,
Hessian-vector products), forward mode (``torch.func.jvp``,
``torch.autograd.forward_ad``), ``torch.func.grad``, ``vmap``, ``jacrev``,
``jacfwd``, ``hessian``.  A γ tensor that requires grad gets the exact
``dL/dγ`` (TaiLr: 0 for γ and the threshold, its weight being a
stop-gradient).  A third derivative raises, as does ``torch.func`` reverse
mode over forward mode (``jacrev(jacfwd(f))``: functorch does not
differentiate a custom ``jvp``; ``hessian`` is forward over reverse).  The
logits are kept (a reference) until ``backward`` for a possible second
derivative.  The hidden-states ``linear_*`` functions have exact first
derivatives and raise for second ones and for a γ that requires grad.

As in the core, the loss has the compute dtype (float32 for float16/bfloat16
logits) and the gradient the logits' dtype.
"""

from __future__ import annotations

import torch

from .. import _docs, _validation
from . import _autograd, _linear
from ._kernel import warmup


__all__ = ["GammaCELoss", "TaiLrLoss", "gamma_ce", "linear_gamma_ce", "linear_tailr", "tailr", "warmup"]


_IGNORE = _autograd.IGNORE_DOC


@_docs.shared("loss", ignore_index=_IGNORE)
def gamma_ce(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=-100, label_smoothing=0.0, where=None,
             compiled=True):
    """γ-CE loss of :func:`gammace_ref.gamma_ce` as a differentiable torch op (the exact gradient).
    """
    opts = _autograd.options(locals())
    return _autograd.loss(logits, targets, opts, axis, compiled, gamma=gamma)


@_docs.shared("loss", ignore_index=_IGNORE)
def tailr(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=-100,
          label_smoothing=0.0, where=None, compiled=True):
    """TaiLr objective of :func:`gammace_ref.tailr` as a differentiable torch op (the paper's gradient).
    """
    opts = _autograd.options(locals())
    return _autograd.loss(logits, targets, opts, axis, compiled, gamma=gamma, threshold=threshold)


class GammaCELoss(torch.nn.Module):
    """``nn.CrossEntropyLoss``-style γ-CE: input ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.

    Parameters follow torch: ``ignore_index=-100``, ``reduction="mean"``,
    ``label_smoothing=0.0``; plus ``gamma`` in [0, 1].
    """

    def __init__(self, gamma, *, ignore_index=-100, reduction="mean", label_smoothing=0.0, compiled=True):
        super().__init__()
        opts = _autograd.options(locals())
        self.gamma, self.ignore_index, self.reduction = opts.gamma, opts.ignore_index, opts.reduction
        self.label_smoothing, self.compiled = opts.label_smoothing, compiled

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


# --------------------------------------------------------------------------- from hidden states


_STATS = ("bool", "Also return the batch's ``gammace_ref.stats.Stats`` (detached sums: counted targets, -log p, "
                  "gradient weight, targets clipped at b): ``(loss, stats)``.")


@_docs.shared("loss", ignore_index=_IGNORE, return_stats=_STATS)
def linear_gamma_ce(hidden, weight, targets, gamma, *, bias=None, reduction="mean", ignore_index=-100,
                    label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None, compiled=True,
                    return_stats=False):
    """γ-CE of ``F.linear(hidden, weight, bias)`` as a differentiable op, without materialising the logits.

    Gradients flow to ``hidden``, ``weight`` and ``bias``; see
    :mod:`gammace_ref.linear` (chunk by chunk over the tokens, and over the
    vocabulary when a row does not fit ``memory_budget``).  Under
    ``torch.autocast`` the logits product runs in the autocast dtype and the
    core, the gradient products and the sums in float32.  Second derivatives
    and a γ (or threshold) tensor that requires grad raise
    ``NotImplementedError``: the logits functions have them, exact.
    """
    opts = _autograd.options(locals())
    _autograd.no_followed_options("gammace_ref.torch.linear_*", gamma)
    return _linear.run(hidden, weight, bias, targets, opts, memory_budget, chunk_size, compiled, return_stats)


@_docs.shared("loss", ignore_index=_IGNORE, return_stats=_STATS)
def linear_tailr(hidden, weight, targets, gamma, threshold, *, bias=None, reduction="mean", ignore_index=-100,
                 label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None, compiled=True,
                 return_stats=False):
    """TaiLr objective of ``F.linear(hidden, weight, bias)`` with the paper's gradient, chunk by chunk.
    """
    opts = _autograd.options(locals())
    _autograd.no_followed_options("gammace_ref.torch.linear_*", gamma, threshold)
    return _linear.run(hidden, weight, bias, targets, opts, memory_budget, chunk_size, compiled, return_stats)
