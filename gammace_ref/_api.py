r"""Public loss functions: thin wrappers over :func:`gammace_ref._core.value_and_grad`.

Every loss function takes the arguments below (TaiLr's also ``threshold``,
its ``b`` in [0, 1]).

Parameters
----------
logits : array, real floating, shape (..., C, ...)
    Unnormalised log-probabilities of any array-API library (NumPy, CuPy,
    PyTorch, JAX, array-api-strict, ...).  float16/bfloat16 are computed in
    float32.  Never modified.
targets : array, integer, shape of logits without the class axis
    Class indices in ``[0, C)``, or ``ignore_index``.
gamma : float or 0-d array in [0, 1]
    γ.  0 is cross-entropy; 1 is the continuous limit ``1 - p``.
axis : int, default -1
    The class axis (``1`` for torch's ``(N, C, d1, ...)`` layout).
reduction : {"mean", "sum", "none"}, default "mean"
    ``"none"`` returns one loss per target (shape of ``targets``; ignored
    targets give 0).  ``"mean"`` averages over the counted (non-ignored)
    targets; with none counted it returns 0 and a zero gradient.  Gradients
    are those of the reduced value; for ``"none"`` that of the sum, so each
    row holds the gradient of its own loss.
ignore_index : int or None, default None
    Targets equal to it count for nothing (no loss, no gradient, not in the
    mean's denominator).  torch's default is -100; ours is None (every target
    counts, and a negative target is an error).
label_smoothing : float in [0, 1), default 0
    ε.  Adds the uniform-target cross-entropy, unweighted, as torch's
    ``label_smoothing`` and the official TaiLr criterion do:
    ``(1-ε)·main + ε/C·Σ_j -log p_j``.

Returns
-------
loss : array
    In the compute dtype (float32 for float16/bfloat16 logits), on the
    logits' device: 0-d for "mean" and "sum", the shape of ``targets`` for
    "none".
grad : array
    (the ``*_grad`` and ``*_value_and_grad`` functions) In ``logits.dtype``,
    on the logits' device, in their layout.
"""

from __future__ import annotations

from . import _core


def _run(logits, targets, gamma, threshold, tailr, need_grad, axis, reduction, ignore_index,
         label_smoothing):
    return _core.value_and_grad(logits, targets, gamma, threshold, tailr=tailr, need_grad=need_grad,
                                axis=axis, reduction=reduction, ignore_index=ignore_index,
                                label_smoothing=label_smoothing)


def gamma_ce_value_and_grad(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None,
                            label_smoothing=0.0):
    r"""γ-cross-entropy and its exact gradient with respect to ``logits``.

    $$
    L = -\frac{\log(\gamma + (1-\gamma)\,p_y)}{1-\gamma},\qquad
    \frac{\partial L}{\partial z} = w\,(\mathrm{softmax}(z) - e_y),\quad
    w = \frac{p_y}{\gamma + (1-\gamma)\,p_y},
    $$

    with ``p = softmax(z)`` along ``axis``.  Relative error ≤ 1e-12 (float64)
    and ≤ 2e-5 (float32) against 60-digit mpmath in every regime, including
    ``1 - p`` far below machine epsilon and ``log p ≪ -700``.  See the module
    docstring of :mod:`gammace_ref._api` for the shared arguments.

    Examples
    --------
    >>> import numpy as np
    >>> from gammace_ref import gamma_ce_value_and_grad
    >>> z = np.array([[60.0, 0.0, 0.0]])       # p = 1 - 1.75e-26
    >>> loss, g = gamma_ce_value_and_grad(z, np.array([0]), 0.1)
    >>> float(loss)                             # ≈ 1 - p, not 0
    1.751302152539304e-26
    >>> float(g[0, 0])                          # -w·(1 - p), not 0
    -1.751302152539304e-26
    """
    return _run(logits, targets, gamma, 0.0, False, True, axis, reduction, ignore_index, label_smoothing)


def gamma_ce(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0):
    """γ-cross-entropy loss; see :func:`gamma_ce_value_and_grad`."""
    return _run(logits, targets, gamma, 0.0, False, False, axis, reduction, ignore_index, label_smoothing)[0]


def gamma_ce_grad(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0):
    """Gradient of :func:`gamma_ce` with respect to ``logits``; see :func:`gamma_ce_value_and_grad`."""
    return _run(logits, targets, gamma, 0.0, False, True, axis, reduction, ignore_index, label_smoothing)[1]


def tailr_value_and_grad(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None,
                         label_smoothing=0.0):
    r"""TaiLr objective as the official criterion computes it, and its gradient.

    Per target, with the weight ``W = clip(w, b, 1)`` held constant
    (stop-gradient) and ``b = threshold``:

    $$
    \begin{aligned}
    \ell &= (1-\varepsilon)\,W\,(-\log p_y) + \frac{\varepsilon}{C}\sum_j(-\log p_j),\\
    \frac{\partial \ell}{\partial z} &= (1-\varepsilon)\,W\,(\mathrm{softmax} - e_y)
        + \varepsilon\,(\mathrm{softmax} - 1/C).
    \end{aligned}
    $$

    The value is a surrogate (its true derivative would also differentiate
    ``W``); the gradient is the paper's.  ``b = 0`` gives exactly the
    :func:`gamma_ce` gradient; γ = 1, b = 0 is DFT's ``sg(p)·(-log p)``.
    """
    return _run(logits, targets, gamma, threshold, True, True, axis, reduction, ignore_index, label_smoothing)


def tailr(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0):
    """TaiLr surrogate loss; see :func:`tailr_value_and_grad`."""
    return _run(logits, targets, gamma, threshold, True, False, axis, reduction, ignore_index, label_smoothing)[0]


def tailr_grad(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None,
               label_smoothing=0.0):
    """TaiLr gradient with respect to ``logits``; see :func:`tailr_value_and_grad`."""
    return _run(logits, targets, gamma, threshold, True, True, axis, reduction, ignore_index, label_smoothing)[1]
