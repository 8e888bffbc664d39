"""γ as a function of the training step.

The source note suggests starting at γ = 0 (cross-entropy, fast early
training) and moving towards γ = 1 (``1 - p``, the smooth accuracy) as training
goes on.  :func:`gamma_schedule` returns a plain function ``step -> γ`` in the
style of optax schedules.
"""

from __future__ import annotations

import math

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
        ``schedule(step) -> float`` in [0, 1] for any integer ``step``
        (negative steps give ``start``).

    Examples
    --------
    >>> s = gamma_schedule(0.0, 0.8, total_steps=100, warmup_steps=20)
    >>> s(0), s(20), s(60), s(100), s(500)
    (0.0, 0.0, 0.4, 0.8, 0.8)
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
        _validation.integer("step", step)
        if kind == "constant" or step <= warmup_steps:
            return start
        if step >= total_steps:
            return end
        frac = (step - warmup_steps) / ramp
        if kind == "cosine":
            frac = 0.5 * (1.0 - math.cos(math.pi * frac))
        return min(1.0, max(0.0, start + (end - start) * frac))

    return schedule
