"""The error metric of every check: relative error against the reference, and ULPs.

Relative error is ``|got - ref| / max(|ref|, tiny)``, ``tiny`` the dtype's
smallest normal number (so results that underflow count by absolute error
below it); a result and reference both below ``tiny`` (a subnormal flushed to
zero) and equal infinities count as exact, NaN as infinitely wrong.  The
reference (mpmath numbers, :mod:`gammace_ref.testing.reference`) is rounded
to float64 first (:func:`to_float64`: ≤ 1.1e-16 relative, far below any
tolerance here).
"""

from __future__ import annotations

import numpy as np

__all__ = ["rel_err", "to_float64", "ulps"]


def _exact(g, r, tiny):
    """Where ``got`` counts as exact: equal, both NaN, or both below the normal range."""
    # Flushing subnormal results to zero (XLA on CPU, GPUs) is not an error of the implementation.
    return (g == r) | (np.isnan(g) & np.isnan(r)) | ((np.abs(g) < tiny) & (np.abs(r) < tiny))


def rel_err(got, ref, dtype: str) -> float:
    """Worst relative error of float array ``got`` against mpmath numbers ``ref`` (same shape).

    ``ref`` may already be a float64 array (:func:`to_float64`).
    """
    tiny = float(np.finfo(dtype).tiny)
    g = np.asarray(got, dtype=np.float64).ravel()
    r = to_float64(ref).ravel()
    with np.errstate(invalid="ignore"):
        err = np.abs(g - r) / np.maximum(np.abs(r), tiny)
    err = np.where(_exact(g, r, tiny), 0.0, np.where(np.isnan(err), np.inf, err))
    return float(err.max(initial=0.0))


def to_float64(ref):
    """mpmath numbers (any nesting) rounded to a float64 NumPy array."""
    if isinstance(ref, np.ndarray) and ref.dtype == np.float64:
        return ref
    obj = np.asarray(ref, dtype=object)
    return np.array([float(v) for v in obj.ravel()], dtype=np.float64).reshape(obj.shape)


def ulps(got, ref, dtype: str) -> np.ndarray:
    """``|got - ref|`` in units of the last place of ``ref`` in ``dtype`` (floored at the smallest normal)."""
    g = np.asarray(got, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        unit = np.maximum(np.spacing(np.abs(r).astype(dtype)), np.spacing(np.finfo(dtype).tiny)).astype(np.float64)
        err = np.abs(g - r) / unit
    tiny = np.finfo(dtype).tiny
    return np.where(_exact(g, r, tiny), 0.0, np.where(np.isnan(err), np.inf, err))
