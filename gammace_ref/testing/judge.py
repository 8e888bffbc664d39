"""How the oracle judges one result against the mpmath reference: the rules and the two profiles.

Every result is judged in **its own format** -- the dtype the candidate
returned it in (a bfloat16 kernel's float32 loss is judged as float32, its
bfloat16 gradient as bfloat16) -- against the reference computed exactly for
the rounded inputs the candidate received.  Each format ``f`` allows a
compute error ``REL[f]`` (relative) and, for the 16-bit formats, the
rounding of the result into ``f`` (``ULPS`` units in the last place):

========  =========================================  ======================
format    element-wise rule (``|got - ref| ≤``)      absolute floor
========  =========================================  ======================
float64   ``1e-12·|ref|``                            below the smallest
float32   ``2e-5·|ref|``                             normal: exact
bfloat16  ``1 ulp(ref) + 2e-5·|ref|``                ``2**-126``
float16   ``1 ulp(ref) + 2e-5·|ref|``                ``2**-14``
========  =========================================  ======================

(float32 and float64 are today's tolerances: a result and reference both
below the smallest normal number count as exact, so flushing subnormals to
zero is no error.)  A float32-compute kernel whose result is correctly
rounded to a 16-bit format is within half an ulp plus its float32 error
(``2e-5`` relative is 0.005 ulp of bfloat16): the rule has a factor of two to
spare (measured: a careful float32-compute kernel is within 0.50 ulp in
bfloat16 and float16); a kernel that *computes* in bfloat16 loses many ulps
wherever it cancels (``lse - z_y``, ``p - 1``: 10 to 156 ulps in the
battery) and fails there.

Three ways to apply the rule, :func:`elementwise` and :func:`rowwise`:

* **values** (per-example or reduced losses) are judged element-wise in both
  profiles;
* the **logits gradient** is judged element-wise under ``profile="reference"``
  (every component to the tolerance, the promise of gammace_ref itself; with
  label smoothing a component is the difference of two terms and is judged
  relative to the larger, ``reference.magnitude(..., onehot=False)``, the
  condition of the difference) and norm-wise per row under
  ``profile="kernel"``:
  ``‖got_i - ref_i‖₂ ≤ tol·‖m_i‖₂`` where ``m_i`` is the row's *magnitude*
  (:func:`gammace_ref.testing.reference.magnitude`: the size of the terms
  ``(k+ε)·softmax`` and ``k·onehot + ε/C`` whose difference the gradient
  is).  That is what a float32-compute kernel can promise: a component
  of 1e-26 beside components of 0.1 is not failed for its relative error,
  and ``p_y - 1`` may carry the absolute error ``eps·k`` of its subtraction;
  the values (``p → 1``), ignored rows (magnitude 0: the gradient must be 0),
  masked rows and γ = 1 stay judged as strictly as before;
* **gradients through a linear layer** (``d hidden = G·W``,
  ``d weight = Gᵀ·h``, ``d bias = Σ_rows G``) are accumulated products of
  mixed signs: a component can cancel to any size, so its element-wise
  relative error is not something any floating-point implementation can
  promise.  They are judged norm-wise per row of the result (a token's
  ``d hidden``, a class's ``d weight`` row, a class's ``d bias``) against
  the same product of the magnitudes, ``|G|·|W|``, ``|G|ᵀ·|h|``,
  ``Σ_rows |G|`` -- the error bound of a floating-point sum of products --
  with ``|G|`` the gradient's magnitude (profile ``reference``) or the terms'
  magnitude ``m`` (profile ``kernel``), each row of ``G`` times the condition
  ``κ_i = 1 + 2·max_j Σ_k |h_ik W_jk|`` of forming its logits (a kernel that
  rounds logit ``z`` moves the softmax relatively by that rounding); the
  loss of a fused linear kernel likewise against
  ``|L_i| + Σ_j |∂L_i/∂z_ij|·Σ_k |h_ik W_jk|``.  The reported relative error
  is relative to the magnitude (the loss) alone; the rule shows ``·κ``.

Norm-wise the 16-bit rounding allowance is ``ULPS·eps`` relative (``eps`` the
spacing at 1: rounding each component costs at most half of it) and the
absolute floor is the format's smallest normal number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .formats import FORMATS, ulp

__all__ = ["PROFILES", "REL", "ULPS", "Verdict", "elementwise", "rowwise", "rule_text"]

PROFILES = ("reference", "kernel")

#: The compute error allowed in a result of each format (relative).
REL = {"float64": 1e-12, "float32": 2e-5, "bfloat16": 2e-5, "float16": 2e-5}

#: The rounding into a 16-bit result allowed on top, in units in the last place of the result.
ULPS = {"float64": 0, "float32": 0, "bfloat16": 1, "float16": 1}


@dataclass
class Verdict:
    """One result against its reference: the judged error, its ratio to the allowed error, and where."""

    err: float  # the judged error: relative, element-wise or norm-wise per row
    ratio: float  # err / allowed (≤ 1 passes)
    ulps: float  # worst element-wise error in units in the last place of the result's format
    abs: float  # worst element-wise absolute error
    where: tuple  # index of the worst element (element-wise) or row (norm-wise)

    @property
    def passed(self) -> bool:
        return self.ratio <= 1.0


def _fmt(fmt: str):
    if fmt not in FORMATS:
        raise ValueError(f"results of dtype {fmt!r} cannot be judged: expected one of {sorted(FORMATS)}")
    return FORMATS[fmt]


def rule_text(fmt: str, norm: bool = False) -> str:
    """A short description of the rule for a result of format ``fmt`` (the report's tolerance column)."""
    rel, n = REL[fmt], ULPS[fmt]
    text = f"{rel:.0e}" if not n else f"{n}ulp+{rel:.0e}"
    return ("row " if norm else "") + text


def _ulps(g, r, fmt, exact):
    with np.errstate(invalid="ignore", over="ignore"):
        u = np.abs(g - r) / ulp(r, fmt)
    return np.where(exact, 0.0, np.where(np.isnan(u), np.inf, u))


def _exact(g, r, tiny):
    # Flushing subnormal results to zero (XLA on CPU, GPUs) is not an error of the implementation.
    return (g == r) | (np.isnan(g) & np.isnan(r)) | ((np.abs(g) < tiny) & (np.abs(r) < tiny))


def elementwise(got, ref, fmt: str, scale=None, shown=None) -> Verdict:
    """Every element of ``got`` (a result of format ``fmt``) against ``ref`` (float64, same shape).

    The compute error is relative to ``scale`` (default ``|ref|``): for a
    component that is the difference of larger terms, the size of those terms
    (the condition of the difference).  The reported relative error is
    relative to ``shown`` (default: ``scale``).
    """
    f = _fmt(fmt)
    g = np.asarray(got, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    s = np.abs(r) if scale is None else np.maximum(np.abs(r), np.asarray(scale, dtype=np.float64))
    shown = s if shown is None else np.maximum(np.abs(r), np.asarray(shown, dtype=np.float64))
    exact = _exact(g, r, f.tiny)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(g - r)
        rel = diff / np.maximum(shown, f.tiny)
        floor = f.tiny if ULPS[fmt] else REL[fmt] * f.tiny
        allowed = np.maximum(REL[fmt] * s + ULPS[fmt] * ulp(r, fmt), floor)
        ratio = diff / allowed
    rel = np.where(exact, 0.0, np.where(np.isnan(rel), np.inf, rel))
    ratio = np.where(exact, 0.0, np.where(np.isnan(ratio), np.inf, ratio))
    diff = np.where(exact, 0.0, np.where(np.isnan(diff), np.inf, diff))
    if ratio.size == 0:
        return Verdict(0.0, 0.0, 0.0, 0.0, ())
    i = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    return Verdict(float(rel.max()), float(ratio[i]), float(_ulps(g, r, fmt, exact).max()), float(diff.max()),
                   tuple(int(v) for v in i))


def rowwise(got, ref, magnitude, fmt: str, shown=None) -> Verdict:
    """Each row of ``got`` (2-d, format ``fmt``) norm-wise against ``ref``, relative to the row of ``magnitude``.

    Row ``i`` passes when ``‖got_i - ref_i‖₂ ≤ (REL + ULPS·eps)·‖magnitude_i‖₂``
    or the error is below the format's smallest normal number.  The reported
    relative error is relative to the rows of ``shown`` (default:
    ``magnitude``).  ``where`` is ``(row, column)`` of the worst row's largest
    component error.
    """
    f = _fmt(fmt)
    g = np.asarray(got, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    m = np.asarray(magnitude, dtype=np.float64)
    sh = m if shown is None else np.asarray(shown, dtype=np.float64)
    g2, r2, m2, s2 = (a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1) for a in (g, r, m, sh))
    exact = _exact(g2, r2, f.tiny)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(exact, 0.0, np.abs(g2 - r2))
        diff = np.where(np.isnan(diff), np.inf, diff)
        err = np.sqrt(np.sum(_scaled_sq(diff), axis=1)) * _row_scale(diff)
        scale = np.sqrt(np.sum(_scaled_sq(m2), axis=1)) * _row_scale(m2)
        rel = err / np.maximum(np.sqrt(np.sum(_scaled_sq(s2), axis=1)) * _row_scale(s2), f.tiny)
        ratio = err / np.maximum((REL[fmt] + ULPS[fmt] * f.eps) * scale, f.tiny)
    rel = np.where(np.isnan(rel), np.inf, rel)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    if ratio.size == 0:
        return Verdict(0.0, 0.0, 0.0, 0.0, ())
    i = int(np.argmax(ratio))
    j = int(np.argmax(diff[i])) if diff.shape[1] else 0
    return Verdict(float(rel.max()), float(ratio[i]), float(_ulps(g2, r2, fmt, exact).max(initial=0.0)),
                   float(diff.max(initial=0.0)), (i, j))


def _row_scale(a):
    """Each row's largest |element| (1 where 0 or not finite): norms without overflow or underflow."""
    s = np.max(np.abs(a), axis=1, initial=0.0)
    return np.where((s > 0) & np.isfinite(s), s, 1.0)


def _scaled_sq(a):
    return np.square(np.abs(a) / _row_scale(a)[:, None])
