"""Vocabulary-parallel γ-CE and TaiLr inside ``jax.shard_map``: the counterpart of ``gammace_ref.torch.distributed``.

Inside a ``shard_map`` whose mesh axis ``axis_name`` splits the classes,
each device holds ``logits`` ``(..., C_local)`` (class axis last): device
``i`` along the axis has the classes ``[i·C_local, (i+1)·C_local)`` of
``C = C_local · axis_size``; ``targets`` are global class indices, the same on
every device.  The core runs on the slice with its row reductions made
across the axis (:class:`gammace_ref._execution.Sharded`): a ``pmax`` of the
row maxima, then one ``psum`` of two values per row (three with label
smoothing) -- O(N) floats, never O(N·C).  Every device returns the same loss
and differentiates it with the exact derivatives of :mod:`gammace_ref.jax`
(its gradient: the device's slice; second derivatives and dL/dγ too, each
product's row sums also reduced across the axis).

>>> mesh = jax.make_mesh((4,), ("vocab",))  # doctest: +SKIP
>>> f = jax.shard_map(lambda z, y: GJD.gamma_ce(z, y, 0.1, axis_name="vocab"), mesh=mesh,
...                   in_specs=(P(None, "vocab"), P()), out_specs=P())  # doctest: +SKIP
>>> loss, grad = jax.value_and_grad(f)(logits, targets)  # doctest: +SKIP
"""

from __future__ import annotations

from .. import _docs, _validation
from . import _call, _loss

__all__ = ["gamma_ce", "tailr"]

_AXIS_NAME = ("hashable", "The ``shard_map`` mesh axis the classes are split over (the class axis is last).")


@_docs.shared("loss", axis_name=_AXIS_NAME)
def gamma_ce(logits, targets, gamma, *, axis_name, reduction="mean", ignore_index=None, label_smoothing=0.0,
             where=None):
    """γ-CE of the full vocabulary from this device's slice of the classes (inside ``shard_map``).
    """
    opts = _validation.options_of(locals())
    return _call(_loss, (logits, targets), opts, -1, axis_name)


@_docs.shared("loss", axis_name=_AXIS_NAME)
def tailr(logits, targets, gamma, threshold, *, axis_name, reduction="mean", ignore_index=None, label_smoothing=0.0,
          where=None):
    """TaiLr (weight ``clip(w, b, 1)``, computed once per row) from this device's slice of the classes.
    """
    opts = _validation.options_of(locals())
    return _call(_loss, (logits, targets), opts, -1, axis_name)
