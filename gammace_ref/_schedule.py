"""γ as a function of the training step.

The source note suggests starting at γ = 0 (cross-entropy, fast early
training) and moving towards γ = 1 (``1 - p``, the smooth accuracy) as training
goes on.  :func:`gamma_schedule` returns a plain function ``step -> γ`` in the
style of optax schedules: it takes a Python int or a 0-d array of any library,
traced or not (written with the array's own operators only), and returns γ of
the same kind.
"""

from __future__ import annotations

import math
import numbers

from . import _validation

KINDS = ("linear", "cosine", "constant")


def gamma_schedule(start=0.0, end=1.0, *, total_steps, warmup_steps=0, kind="linear"):
    """Make a γ schedule: ``start`` for ``warmup_steps``, then to ``end`` at ``total_steps``.

    Parameters
    ----------
    start, end : float in [0, 1]
        γ during warm-up and from ``total_steps`` on.
    total_steps : int > 0
        Step at which ``end`` is reached.
    warmup_steps : int in [0, total_steps], default 0
        Steps held at ``start`` before the ramp begins.
    kind : {"linear", "cosine", "constant"}
        Shape of the ramp: straight line, half cosine (flat at both ends), or
        no ramp (always ``start``).

    Returns
    -------
    callable
        ``schedule(step) -> γ`` in [0, 1], for ``step`` a Python int (γ a
        Python float) or a 0-d array of any array library, concrete or traced
        (``jax.jit``, ``torch.compile(fullgraph=True)``; γ then is a 0-d array
        of that library -- NumPy: a NumPy scalar --, in its default float dtype,
        on the step's device), as optax's
        schedules take a traced step count.  Negative steps give ``start``.

    Examples
    --------
    >>> s = gamma_schedule(0.0, 0.8, total_steps=100, warmup_steps=20)
    >>> s(0), s(20), s(60), s(100), s(500)
    (0.0, 0.0, 0.4, 0.8, 0.8)
    >>> import numpy as np
    >>> float(s(np.asarray(60)))  # an array step gives γ of its library (here a NumPy float64)
    0.4
    """
    start = _validation.unit_interval("start", start)
    end = _validation.unit_interval("end", end)
    if not isinstance(start, float) or not isinstance(end, float):
        raise TypeError("start and end must be concrete numbers, not traced arrays")
    for name, v in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
        _validation.integer(name, v)
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    ramp = total_steps - warmup_steps

    def schedule(step):
        if not isinstance(step, numbers.Number) and hasattr(step, "ndim") and hasattr(step, "dtype"):
            return _on_array(step)
        _validation.integer("step", step)
        if kind == "constant" or step <= warmup_steps:
            return start
        if step >= total_steps:
            return end
        frac = (step - warmup_steps) / ramp
        if kind == "cosine":
            frac = 0.5 * (1.0 - math.cos(math.pi * frac))
        return min(1.0, max(0.0, start + (end - start) * frac))

    def _on_array(step):
        # The array's own operators only: no value is read and no namespace looked up, so the same
        # code runs eagerly and traced (a namespace lookup under torch.compile draws Dynamo warnings).
        if step.ndim != 0:
            raise ValueError(f"step must be an int or a 0-d array, got shape {tuple(step.shape)}")
        x = (step - warmup_steps) / ramp  # true division: the library's default float dtype
        frac = (abs(x) - abs(x - 1.0) + 1.0) * 0.5  # clip(x, 0, 1)
        if kind == "constant":
            frac = frac * 0.0
        elif kind == "cosine":
            frac = _sin_squared(frac * (0.5 * math.pi))  # (1 - cos(π·frac))/2
        gamma = start + (end - start) * frac
        return (abs(gamma) - abs(gamma - 1.0) + 1.0) * 0.5

    return schedule


#: sin(x) = x·Σ_k (-x²)^k/(2k+1)!, k < 12: below 1e-20 on [0, π/2].
_SIN = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(12))


def _sin_squared(x):
    """``sin(x)²`` for ``x`` in [0, π/2] with operators only (its series, Horner in x²)."""
    x2 = x * x
    acc = x2 * _SIN[-1] + _SIN[-2]
    for c in reversed(_SIN[:-2]):
        acc = acc * x2 + c
    s = x * acc
    return s * s
