"""The hard numerical regimes, and the worst relative error of a backend on each.

Every regime is a small batch of logit rows (class axis last) with targets,
built for a dtype: ``"float64"``, ``"float32"``, ``"bfloat16"`` or
``"float16"`` ("huge" logits are ±1e300 in float64, ±1e38 in float32 and
bfloat16, ±6e4 in float16, whose range is ±65504).  The logits are the
regime's values rounded once to the dtype (:func:`as_dtype_rows`; float16
clips the finite values beyond its range to ±65504 first): the reference is
exact for the rounded inputs the implementation receives.  :func:`expected` is a regime's loss and
gradient from :mod:`gammace_ref.testing.reference` (mpmath, computed once per
process); :func:`measure` runs gammace_ref on a backend over every regime × γ
and compares value and every gradient component with it, by
:func:`gammace_ref.testing.metrics.rel_err`.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import numpy as np

from . import formats, metrics

GAMMAS = (0.0, 1e-7, 0.1, 0.5, 0.8, 1.0 - 1e-9, 1.0)
TOLERANCE = {"float64": 1e-12, "float32": 2e-5}
TAILR_THRESHOLD = 0.2


@dataclass(frozen=True)
class Regime:
    name: str
    what: str
    rows: tuple
    targets: tuple


def _big(dtype: str) -> float:
    return {"float64": 1e300, "float16": 6e4}.get(dtype, 1e38)


@functools.lru_cache(maxsize=8)
def regimes(dtype: str = "float64", large_c: int = 100_000):
    """The regime battery for ``dtype``; ``large_c`` sets the huge-vocabulary size."""
    inf, big = math.inf, _big(dtype)
    rng = random.Random(1234)
    wide = [rng.gauss(0.0, 3.0) for _ in range(large_c)]
    wide_max = list(wide)
    wide_max[7] = max(wide) + 30.0
    return (
        Regime("p_to_1", "target 60 (and 25) above the rest: 1-p ~ 1e-26, far below eps",
               ((60.0, 0.0, 0.0, -1.0, 2.0), (25.0, 0.5, -3.0, 1.0, 0.0)), (0, 0)),
        Regime("p_to_1_extreme", "target 700 above: 1-p ~ 1e-304 (underflows in float32)",
               ((700.0, 0.0, -5.0),), (0,)),
        Regime("p_to_0", "log p ~ -800 (p underflows): the loss stays finite and exact",
               ((0.0, 800.0, 3.0), (-400.0, 400.0, 0.0)), (0, 0)),
        Regime("moderate", "ordinary logits, p from 0.01 to 0.9",
               ((0.3, -1.2, 2.0, 0.7), (1.0, 0.0, -1.0, 4.0), (2.5, 0.1, 0.2, 0.3)), (1, 0, 0)),
        Regime("huge_logits", "logits near ±max float: ±1e300 (float64), ±1e38 (float32)",
               ((big, big / 2, -big), (big, -big, big), (-big, big, 0.0)), (1, 2, 2)),
        Regime("masked", "-inf (masked) logits, target masked too (p = 0)",
               ((-inf, 3.0, 1.0, -inf), (-inf, 0.0, 1.0, 2.0), (-inf, 50.0, -inf, -inf)), (1, 0, 1)),
        Regime("ties", "all logits equal, and a tie at the top",
               ((2.0, 2.0, 2.0, 2.0), (5.0, 5.0, 1.0, 0.0)), (2, 1)),
        Regime("one_class", "C = 1 (p = 1 exactly)", ((3.7,), (-1e5,)), (0, 0)),
        Regime("two_classes", "C = 2", ((0.3, -1.2), (40.0, -1.0), (-30.0, 30.0)), (1, 0, 0)),
        Regime("huge_vocab", f"C = {large_c}: N(0, 3) logits; the same with the target 30 above",
               (tuple(wide), tuple(wide_max)), (3, 7)),
    )


def as_dtype_rows(regime: Regime, dtype: str):
    """The regime's logits as a NumPy array of ``dtype`` and the exact Python floats it holds.

    For ``"bfloat16"`` the array is float32 holding bfloat16 values (NumPy
    has no bfloat16; see :mod:`gammace_ref.testing.formats`).
    """
    arr = np.asarray(regime.rows, dtype=np.float64)
    if dtype == "float16":
        top = formats.FORMATS["float16"].max
        arr = np.where(np.isfinite(arr), np.clip(arr, -top, top), arr)
    arr = formats.round_array(arr, dtype)
    return arr, [[float(v) for v in r] for r in arr]


def expected(name: str, dtype: str, gamma: float, threshold=None, large_c: int = 100_000):
    """The mpmath loss and gradient of regime ``name`` (rounded to float64), computed once per process.

    ``threshold=None`` is γ-CE, a number TaiLr with ``b = threshold``;
    ``large_c`` the class count of ``huge_vocab``.  Returns ``(loss, grad)``,
    float64 arrays of shapes ``(N,)`` and ``(N, C)``.
    """
    return _expected(name, dtype, large_c, gamma, threshold)


@functools.lru_cache(maxsize=None)
def _expected(name, dtype, large_c, gamma, threshold):
    from . import reference

    regime = next(r for r in regimes(dtype, large_c) if r.name == name)
    loss, grad = reference.batch(as_dtype_rows(regime, dtype)[1], regime.targets, gamma, threshold=threshold)
    return metrics.to_float64(loss), metrics.to_float64(grad)


def _gamma_ce(z, y, gamma):
    from .. import gamma_ce_value_and_grad

    return gamma_ce_value_and_grad(z, y, gamma, reduction="none")


def _tailr(z, y, gamma):
    from .. import tailr_value_and_grad

    return tailr_value_and_grad(z, y, gamma, TAILR_THRESHOLD, reduction="none")


LOSSES = {"gamma_ce": (_gamma_ce, None), "tailr": (_tailr, TAILR_THRESHOLD)}  # name -> (fn(z, y, γ), threshold)


def measure(backend, dtype="float64", gammas=GAMMAS, large_c=100_000, only=None, progress=None):
    """Worst relative error per regime, for ``gamma_ce`` and ``tailr`` (b = 0.2).

    ``backend`` is a :class:`~gammace_ref.testing.backends.BackendUnderTest`
    or a :class:`~gammace_ref.testing.backends.Backend` value (``"torch"``,
    ``"jax.jit"``, ...); the losses run as it runs them (its ``compile``:
    under ``jax.jit`` γ is traced, one compilation per shape).  ``only``
    restricts the regimes by name; ``progress(regime, loss)`` is called after
    each.  Returns ``{(regime, loss): (worst_value_err, worst_grad_err)}``.
    """
    from .backends import Backend, BackendUnderTest

    b = backend if isinstance(backend, BackendUnderTest) else BackendUnderTest(Backend(backend))
    fns = {name: (b.compile(fn), threshold) for name, (fn, threshold) in LOSSES.items()}
    out = {}
    for regime in regimes(dtype, large_c):
        if only is not None and regime.name not in only:
            continue
        arr, rows = as_dtype_rows(regime, dtype)
        z = b.asarray(arr)
        y = b.asarray(np.asarray(regime.targets, dtype=np.int64))
        for name, (fn, threshold) in fns.items():
            worst_v = worst_g = 0.0
            for g in gammas:
                loss, grad = b.numpy(fn(z, y, g))
                ref_l, ref_g = expected(regime.name, dtype, g, threshold, large_c)
                worst_v = max(worst_v, metrics.rel_err(loss, ref_l, dtype))
                worst_g = max(worst_g, metrics.rel_err(grad, ref_g, dtype))
            out[(regime.name, name)] = (worst_v, worst_g)
            if progress:
                progress(regime.name, name)
    return out
