"""Statistics of a batch for logging: the NLL, the mean gradient weight, the fraction of targets clipped at b.

The γ-CE / TaiLr value is the objective, so runs with different γ cannot be
compared by it; the cross-entropy (NLL) of the same batch can.  A
:class:`Stats` holds detached sums over the counted targets (they add across
chunks, micro-batches and ranks; :meth:`Stats.means` divides):

* ``count``: the counted targets (not ``ignore_index``, ``where`` True);
* ``nll``: Σ ``-log p``, the cross-entropy;
* ``weight``: Σ of the weight each target's gradient gets: ``w = p/(γ + (1-γ)p)``
  for γ-CE (1 at γ = 0), TaiLr's ``clip(w, b, 1)``;
* ``clipped``: the number of targets whose ``w`` is below TaiLr's ``b`` (the
  threshold at work; 0 for γ-CE).

The hidden-states functions return them with the loss at no extra pass
(``return_stats=True`` of :mod:`gammace_ref.linear` and
``gammace_ref.torch.linear_gamma_ce``); :func:`loss_stats` computes them from
logits (one pass over them, as the loss takes).

>>> import numpy as np
>>> logits, targets = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), np.array([0, 2])
>>> st = loss_stats(logits, targets, 0.5, 0.3)
>>> {k: round(v, 4) for k, v in st.means().items()}
{'nll': 1.6672, 'weight': 0.5904, 'clipped': 0.5}
"""

from __future__ import annotations

from . import _validation, linear
from ._core import Stats

__all__ = ["Stats", "loss_stats"]


def loss_stats(logits, targets, gamma=0.0, threshold=None, *, axis=-1, ignore_index=None, where=None) -> Stats:
    """:class:`Stats` of a batch of logits (class axis ``axis``) for γ (and TaiLr's ``threshold``, if given).

    Checks its arguments as the loss functions do; an invalid row raises
    (eager) or makes the sums NaN (traced).
    """
    opts = _validation.options(gamma, 0.0 if threshold is None else threshold, tailr=threshold is not None,
                               reduction="sum", ignore_index=ignore_index, where=where)
    a = _validation.check_logits(logits, targets, opts, axis=axis)
    return linear.core_kernels(a.xp, a.device).stats(a.z, a.y, a.options)
