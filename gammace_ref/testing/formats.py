"""The floating-point formats the oracle feeds and judges: float64, float32, bfloat16, float16.

NumPy has no bfloat16, so a bfloat16 array is carried as a float32 array
whose every value is a bfloat16 number (:func:`round_array` rounds to nearest,
ties to even, as a conversion to bfloat16 does); a backend then converts it
exactly (``tensor.to(torch.bfloat16)``, ``jnp.asarray(a, jnp.bfloat16)``).
float16 is NumPy's own.  :func:`ulp` is the spacing of a format at a value,
for any of the four, on float64 arrays.

>>> round_array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1e39], "bfloat16").tolist()  # ties to even; overflow
[1.0, 1.015625, inf]
>>> ulp([1.0, 3.0, 0.0], "bfloat16").tolist() == [2.0**-7, 2.0**-6, 2.0**-133]
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FORMATS", "Format", "name_of", "round_array", "ulp"]


@dataclass(frozen=True)
class Format:
    name: str
    bits: int  # significand bits, the implicit one included
    emin: int  # exponent of the smallest normal number: tiny = 2**emin
    max: float  # largest finite value
    storage: str  # the NumPy dtype that carries its values exactly

    @property
    def eps(self) -> float:
        """Spacing at 1 (``2**(1 - bits)``)."""
        return 2.0 ** (1 - self.bits)

    @property
    def tiny(self) -> float:
        """Smallest normal number."""
        return 2.0 ** self.emin


FORMATS = {
    "float64": Format("float64", 53, -1022, float(np.finfo(np.float64).max), "float64"),
    "float32": Format("float32", 24, -126, float(np.finfo(np.float32).max), "float32"),
    "bfloat16": Format("bfloat16", 8, -126, float.fromhex("0x1.fep127"), "float32"),
    "float16": Format("float16", 11, -14, 65504.0, "float16"),
}


def name_of(dtype) -> str:
    """The format name of a dtype of any library (``torch.bfloat16``, ``jnp.float16``, ``np.float32``, ...)."""
    text = str(dtype).rsplit(".", 1)[-1].strip("'>")
    if text in FORMATS:
        return text
    if text in ("half",):
        return "float16"
    if text in ("float", "single"):
        return "float32"
    if text in ("double",):
        return "float64"
    return text


def round_array(a, fmt: str) -> np.ndarray:
    """``a`` rounded to ``fmt`` (to nearest, ties to even; overflow to ±inf), as a NumPy array of its storage dtype."""
    a = np.asarray(a, dtype=np.float64)
    f = FORMATS[fmt]
    if fmt != "bfloat16":
        with np.errstate(over="ignore"):
            return a.astype(f.storage)
    # One rounding straight from float64: scale the significand to `bits` bits (exact), round it to
    # an integer with ties to even (np.rint), scale back; below the normal range the quantum is fixed.
    finite = np.isfinite(a)
    x = np.where(finite, a, 0.0)
    _, e = np.frexp(x)
    e = np.maximum(e, f.emin + 1)  # subnormals: the quantum of the smallest binade
    r = np.ldexp(np.rint(np.ldexp(x, f.bits - e)), e - f.bits)
    r = np.where(np.abs(r) > f.max, np.copysign(np.inf, r), r)
    return np.where(finite, r, a).astype(np.float32)


def ulp(x, fmt: str) -> np.ndarray:
    """The spacing of ``fmt`` at ``|x|`` (float64 array): ``2**(e - bits + 1)`` for ``2**e ≤ |x| < 2**(e+1)``.

    Below the smallest normal number it is the subnormal spacing
    ``2**(emin - bits + 1)``; at and above the largest finite number, the
    spacing there.
    """
    f = FORMATS[fmt]
    a = np.abs(np.asarray(x, dtype=np.float64))
    a = np.where(np.isfinite(a), np.minimum(a, f.max), f.max)
    _, e = np.frexp(np.maximum(a, f.tiny))  # a = m·2**e, m in [0.5, 1)
    return np.ldexp(1.0, e - f.bits)
