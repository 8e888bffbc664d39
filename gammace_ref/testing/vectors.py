r"""Golden vectors: the regime battery with its mpmath answers, as portable JSON.

:func:`generate` builds one JSON document per regime of
:mod:`gammace_ref.testing.regimes`, :func:`write` writes them
(``gammace-ref vectors --out DIR``), :func:`load` reads them back as
:class:`Case` objects with NumPy arrays, checking every field.  The files are
the ground truth of the conformance suite, meant to be read by
implementations in any language; the package ships them
(``gammace_ref/conformance/vectors/<regime>.json``, :func:`shipped`), and
:func:`load` reads those by default.

File format (version 1)
-----------------------
UTF-8 JSON, one object per file, keys always in this order::

    {
     "format": "gammace-ref golden vectors",
     "version": 1,
     "regime": "p_to_1",                       # the file's name without ".json"
     "description": "...",                     # what the regime is (prose)
     "notes": "...",                           # C, the γ used, anything reduced (prose)
     "reference": "...",                       # how the expected values were made (prose)
     "reduction": "none",
     "float64": {<group>},
     "float32": {<group>}
    }

    <group> = {
     "logits": [[<float>, ...], ...],          # N rows × C classes (class axis last)
     "targets": [<int>, ...],                  # N class indices, JSON integers
     "cases": [{<case>}, ...]
    }

    <case> = {
     "loss": "gamma_ce" | "tailr",
     "gamma": <float>,                         # γ
     "threshold": <float> | null,              # TaiLr's b; null for gamma_ce
     "label_smoothing": <float>,               # ε ("0.0": none)
     "expected_loss": [<float>, ...],          # N per-row losses (reduction "none")
     "expected_grad": [[<float>, ...], ...]    # N × C: d(row loss)/d(logits)
    }

For example, the first case of ``two_classes.json`` (float64 group)::

    "logits": [["0.3", "-1.2"], ["40.0", "-1.0"], ["-30.0", "30.0"]],
    "targets": [1, 0, 0],
    {"loss": "gamma_ce", "gamma": "0.0", "threshold": null, "label_smoothing": "0.0",
     "expected_loss": ["1.7014132779827524", "1.5628821893349888e-18", "60.0"],
     "expected_grad": [["0.8175744761936437", "-0.8175744761936437"],
                       ["-1.5628821893349888e-18", "1.5628821893349888e-18"],
                       ["-1.0", "1.0"]]}

(the files put each row of a matrix on a line of its own).  Every
``<float>`` is a JSON *string* holding a decimal number that round-trips
exactly: within the ``"float64"`` group it is Python's ``repr`` of the
binary64 value (the shortest decimal that reads back to the same double);
within ``"float32"`` it is the shortest decimal that reads back to the same
binary32 value, in the same layout (``"0.1"``, ``"60.0"``,
``"1.7513021e-26"``, ``"1e+38"``: positional for 1e-4 ≤ |x| < 1e16, else one
digit, an optional fraction and an exponent of at least two digits).
Non-finite values are ``"inf"``, ``"-inf"`` and ``"nan"``; a zero expected
value is ``"0.0"`` (mpmath has no signed zero, so an implementation may
return either zero).  ``gamma``, ``threshold`` and ``label_smoothing``
are float64 strings in both groups: they are parameters, not data.  Read a
float32 string with a correctly rounding decimal-to-binary32 parser (C's
``strtof``, Rust's ``str::parse::<f32>``, Go's ``ParseFloat(s, 32)``...);
reading it as a double and then narrowing gives the same value too (the
generator checks this for every string it writes).

The float32 group's logits are the float64 logits rounded to float32 (huge
logits are ±1e38 there instead of ±1e300), and its expected values are the
exact answers *for those float32 inputs*.  Expected values use the float64
parameters as written (γ = 0.999999999 is not rounded to 1 for float32);
an implementation that rounds γ, b or ε to float32 stays far inside the
float32 tolerance.

Semantics of one case, row by row (``p = softmax(z)``, ``y`` the target,
``C`` the number of classes, ``w = p_y/(γ + (1-γ)p_y)``)::

    gamma_ce: L = -log(γ + (1-γ)p_y)/(1-γ)  (1 - p_y at γ = 1),  grad = w·(p - e_y)
    tailr:    W = clip(w, b, 1) held constant,  L = W·(-log p_y),  grad = W·(p - e_y)
    ε > 0:    L ← (1-ε)·L + ε/C·Σ_j -log p_j,  grad ← (1-ε)·grad + ε·(p - 1/C)

Expected values
---------------
:mod:`gammace_ref.testing.reference` evaluates each case at 60 significant
digits (about 200 bits) on the exact binary inputs, and each result is then
rounded *once*, to nearest with ties to even, straight to the group's format
(:func:`round_to`): 53 bits for float64, 24 bits for float32, with the
format's own subnormal range (a result below half the smallest subnormal
becomes 0) and overflow (a result at or beyond the largest finite value plus
half an ulp becomes ±inf).  Rounding the float64 result to float32 instead
could round twice and miss by one ulp; this does not.  The rounding is
correct unless the exact value lies within about 2^-170 (relative) of a
rounding boundary.

An implementation conforms when, for every case, the worst relative error of
its loss and of every gradient component is within the group's tolerance
(:data:`gammace_ref.testing.regimes.TOLERANCE`: 1e-12 in float64, 2e-5 in
float32), measured as ``|got - expected| / max(|expected|, tiny)`` with
``tiny`` the format's smallest normal number; equal infinities, and a result
and expected value both below ``tiny`` (subnormals flushed to zero), count as
exact, NaN as infinitely wrong (:func:`gammace_ref.testing.metrics.rel_err`
is the definition).

What is covered
---------------
Every regime of the battery, in both formats, for ``gamma_ce`` and ``tailr``
(b = :data:`~gammace_ref.testing.regimes.TAILR_THRESHOLD`) at every γ of
:data:`~gammace_ref.testing.regimes.GAMMAS`, except ``huge_vocab``: C =
:data:`HUGE_VOCAB_C` (4096, not the battery's 100000) and γ ∈
:data:`HUGE_VOCAB_GAMMAS` only, to keep that file under 2 MB.  The regimes of
:data:`SMOOTHING_REGIMES` also carry the same losses with label smoothing
ε = :data:`SMOOTHING` at γ ∈ :data:`SMOOTHING_GAMMAS`.  Case order within a
group: ε = 0 before ε > 0, then ``gamma_ce`` before ``tailr``, then γ as in
the tuples.
"""

from __future__ import annotations

import errno
import importlib.resources
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import regimes as _regimes

FORMAT = "gammace-ref golden vectors"
VERSION = 1
DTYPES = ("float64", "float32")
LOSSES = (("gamma_ce", None), ("tailr", _regimes.TAILR_THRESHOLD))
HUGE_VOCAB_C = 4096
HUGE_VOCAB_GAMMAS = (0.0, 1.0)
SMOOTHING = 0.1
SMOOTHING_REGIMES = ("p_to_1", "moderate")
SMOOTHING_GAMMAS = (0.0, 0.5, 1.0)

# (significand bits, exponent of the smallest subnormal, exponent of 2^(emax+1)).
_BINARY = {"float64": (53, -1074, 1024), "float32": (24, -149, 128)}

_REFERENCE_TEXT = ("mpmath at 60 significant digits (gammace_ref.testing.reference) on the exact binary "
                   "inputs, each number rounded once, to nearest with ties to even, to the group's format "
                   "(subnormals and overflow to inf included)")


# --------------------------------------------------------------------------- numbers


def round_to(x, dtype: str) -> float:
    """The mpmath number ``x`` correctly rounded to ``dtype``, as a Python float (exact for float32 too).

    One rounding, to nearest with ties to even, at the format's precision and
    with its subnormal quantum and overflow threshold.

    >>> from mpmath import mp, mpf
    >>> round_to(mpf(2) ** -150, "float32"), round_to(mpf(3) * mpf(2) ** -150, "float32") == 2.0 ** -148
    (0.0, True)
    >>> with mp.workdps(60):
    ...     x = 1 + mpf(2) ** -24 + mpf(2) ** -80  # just above a float32 midpoint
    >>> round_to(x, "float32") == 1 + 2.0 ** -23, float(np.float32(float(x))) == 1.0  # float64 first: 1.0
    (True, True)
    """
    import mpmath

    if not isinstance(x, mpmath.mpf):
        x = mpmath.mpf(x)  # exact for a Python float (mpf(an mpf) would round it to mp.prec)
    if mpmath.isnan(x):
        return math.nan
    if mpmath.isinf(x):
        return math.inf if x > 0 else -math.inf
    sign, man, exp, bc = x._mpf_
    if not man:
        return 0.0
    bits, q_min, over = _BINARY[dtype]
    if exp + bc < q_min:  # |x| < 2^(q_min - 1): below half the smallest subnormal
        return 0.0
    if exp + bc > over:  # |x| ≥ 2^over
        return -math.inf if sign else math.inf
    q = max(exp + bc - bits, q_min)  # exponent of the last kept bit
    if exp < q:
        shift = q - exp
        r = man >> shift
        rem, half = man - (r << shift), 1 << (shift - 1)
        if rem > half or (rem == half and r & 1):
            r += 1
        man, exp = r, q
    if man and man.bit_length() + exp > over:
        v = math.inf
    else:
        v = math.ldexp(man, exp)  # exact: ≤ 53 bits, exponent in the double's range
    return -v if sign else v


def _repr_layout(neg: bool, digits: str, exp10: int) -> str:
    """Python-``repr`` layout of ±0.d1d2...×10^(exp10+1): positional for -4 ≤ exp10 < 16."""
    s = "-" if neg else ""
    if -4 <= exp10 < 16:
        if exp10 >= 0:
            whole = digits[:exp10 + 1].ljust(exp10 + 1, "0")
            return f"{s}{whole}.{digits[exp10 + 1:] or '0'}"
        return f"{s}0.{'0' * (-exp10 - 1)}{digits}"
    mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{s}{mant}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"


def format_float(x, dtype: str) -> str:
    """Shortest round-trip decimal string of ``x`` in ``dtype``, in Python's ``repr`` layout.

    >>> format_float(0.1, "float32"), format_float(1e38, "float32"), format_float(2.0 ** -149, "float32")
    ('0.1', '1e+38', '1e-45')
    >>> format_float(float("-inf"), "float64"), format_float(1 / 3, "float64")
    ('-inf', '0.3333333333333333')
    """
    if dtype == "float64":
        return repr(float(x))
    v = np.float32(x)
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    neg = bool(np.signbit(v))
    if v == 0:
        return "-0.0" if neg else "0.0"
    mant, e = np.format_float_scientific(abs(v), unique=True, trim="-").split("e")
    return _repr_layout(neg, mant.replace(".", ""), int(e))


def _check_round_trip(s: str, value: float, dtype: str) -> None:
    """``s`` reads back to ``value``: directly, and through a double when ``dtype`` is float32."""
    import mpmath

    want = np.asarray(value, dtype=dtype)
    back = np.asarray(float(s), dtype=np.float64).astype(dtype)
    ok = back.tobytes() == want.tobytes()
    if ok and dtype == "float32" and math.isfinite(value):
        with mpmath.mp.workdps(80):
            ok = round_to(mpmath.mpf(s), "float32") == value
    if not ok:
        raise AssertionError(f"{s!r} does not round-trip to the {dtype} value {value!r}")


def _fmt(value: float, dtype: str) -> str:
    s = format_float(value, dtype)
    _check_round_trip(s, value, dtype)
    return s


# --------------------------------------------------------------------------- generation


def _plan(regime_name: str):
    """(ε, loss, b, γ) of every case of a regime, in file order."""
    gammas = HUGE_VOCAB_GAMMAS if regime_name == "huge_vocab" else _regimes.GAMMAS
    plan = [(0.0, loss, b, g) for loss, b in LOSSES for g in gammas]
    if regime_name in SMOOTHING_REGIMES:
        plan += [(SMOOTHING, loss, b, g) for loss, b in LOSSES for g in SMOOTHING_GAMMAS]
    return plan


def _notes(regime_name: str, n_classes: int) -> str:
    gammas = HUGE_VOCAB_GAMMAS if regime_name == "huge_vocab" else _regimes.GAMMAS
    text = (f"C = {n_classes}. gamma_ce and tailr (b = {_regimes.TAILR_THRESHOLD!r}) at gamma in "
            f"[{', '.join(repr(g) for g in gammas)}]")
    if regime_name == "huge_vocab":
        text += (f"; C = {HUGE_VOCAB_C} here (the accuracy battery uses 100000) and this gamma subset only, "
                 "to keep the file small")
    if regime_name in SMOOTHING_REGIMES:
        text += (f"; also with label_smoothing = {SMOOTHING!r} at gamma in "
                 f"[{', '.join(repr(g) for g in SMOOTHING_GAMMAS)}]")
    return text + "."


def _group(regime, dtype: str) -> dict:
    from . import reference

    arr, rows = _regimes.as_dtype_rows(regime, dtype)
    targets = [int(t) for t in regime.targets]
    cases = []
    for eps, loss, b, g in _plan(regime.name):
        ref_l, ref_g = reference.batch(rows, targets, g, threshold=b, label_smoothing=eps)
        cases.append({
            "loss": loss,
            "gamma": _fmt(g, "float64"),
            "threshold": None if b is None else _fmt(b, "float64"),
            "label_smoothing": _fmt(eps, "float64"),
            "expected_loss": [_fmt(round_to(v, dtype), dtype) for v in ref_l],
            "expected_grad": [[_fmt(round_to(v, dtype), dtype) for v in r] for r in ref_g],
        })
    return {"logits": [[_fmt(v, dtype) for v in r] for r in rows], "targets": targets, "cases": cases}


def _document(regime_name: str) -> dict:
    by_dtype = {d: next(r for r in _regimes.regimes(d, large_c=HUGE_VOCAB_C) if r.name == regime_name)
                for d in DTYPES}
    regime = by_dtype["float64"]
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "regime": regime.name,
        "description": regime.what,
        "notes": _notes(regime.name, len(regime.rows[0])),
        "reference": _REFERENCE_TEXT,
        "reduction": "none",
    }
    for d in DTYPES:
        doc[d] = _group(by_dtype[d], d)
    return doc


def _dump(obj, indent: int = 0) -> str:
    """JSON with a fixed layout: objects one key a line, a list of numbers (a row) on one line."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        body = ",\n".join(f"{pad}{json.dumps(k)}: {_dump(v, indent + 1)}" for k, v in obj.items())
        return "{\n" + body + "\n" + " " * indent + "}"
    if isinstance(obj, list) and obj and isinstance(obj[0], (list, dict)):
        body = ",\n".join(pad + _dump(v, indent + 1) for v in obj)
        return "[\n" + body + "\n" + " " * indent + "]"
    if isinstance(obj, list):
        return "[" + ", ".join(json.dumps(v) for v in obj) + "]"
    return json.dumps(obj, ensure_ascii=False)


def regime_names() -> list[str]:
    """The regimes, in battery order: one file ``<name>.json`` each."""
    return [r.name for r in _regimes.regimes("float64", large_c=HUGE_VOCAB_C)]


def generate(names=None) -> dict[str, str]:
    """``{file name: JSON text}`` for every regime (or those in ``names``); byte-deterministic."""
    return {f"{n}.json": _dump(_document(n)) + "\n" for n in regime_names() if names is None or n in names}


def _is_vector_file(path: Path) -> bool:
    """Whether ``path`` is a golden-vector file (its ``format`` field, in the first bytes as written)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return f'"format": "{FORMAT}"'.encode() in head


def write(out_dir, *, force: bool = False) -> list[Path]:
    """Write :func:`generate`'s files into ``out_dir``; returns their paths.

    ``out_dir`` is created (with its parents) if it does not exist.  A
    directory that already holds files is refused with ``FileExistsError``
    unless ``force``: then its golden-vector files (``*.json`` of this
    format) are replaced by the new set, a vector file the generator no
    longer writes is removed, and every other file is left alone.  Nothing
    in ``out_dir`` changes until every file has been generated and written
    to a temporary directory inside it; the files are then moved in.  A path
    that is a file raises ``NotADirectoryError``; a directory that cannot be
    created or written raises the ``OSError`` of the failing call, before
    the (seconds-long) generation starts.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(out))
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(errno.EEXIST, "the directory is not empty (force=True, or --force, replaces "
                                            "its golden-vector files)", str(out))
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".vectors-", dir=out))
    try:
        texts = generate()
        for name, text in texts.items():
            (tmp / name).write_bytes(text.encode("utf-8"))
        for stale in out.glob("*.json"):
            if stale.name not in texts and _is_vector_file(stale):
                stale.unlink()
        paths = []
        for name in texts:
            os.replace(tmp / name, out / name)
            paths.append(out / name)
        return paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def shipped():
    """The golden vectors shipped in the package (``gammace_ref/conformance/vectors/``).

    A :class:`importlib.resources.abc.Traversable` (a :class:`~pathlib.Path`
    for an ordinary install or a checkout); :func:`load` reads it by default.
    """
    return importlib.resources.files("gammace_ref.conformance") / "vectors"


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, eq=False)
class Case:
    """One case of a golden-vector file, with NumPy arrays of its ``dtype``."""

    regime: str
    dtype: str
    loss: str
    gamma: float
    threshold: float | None
    label_smoothing: float
    logits: np.ndarray  # (N, C), dtype
    targets: np.ndarray  # (N,), int64
    expected_loss: np.ndarray  # (N,), dtype
    expected_grad: np.ndarray  # (N, C), dtype

    @property
    def id(self) -> str:
        b = "" if self.threshold is None else f",b={self.threshold!r}"
        eps = f",eps={self.label_smoothing!r}" if self.label_smoothing else ""
        return f"{self.regime}/{self.dtype}/{self.loss}(gamma={self.gamma!r}{b}{eps})"


def parse_floats(strings, dtype: str) -> np.ndarray:
    """Float strings of the format (any nesting of lists) as a NumPy array of ``dtype``, exactly."""
    obj = np.asarray(strings, dtype=object)
    flat = np.array([float(s) for s in obj.ravel()], dtype=np.float64)
    return flat.astype(dtype).reshape(obj.shape)


class _Invalid:
    """Builds the ``ValueError`` for one field of one file: ``<file>: <field>: <what is wrong>``."""

    def __init__(self, path):
        self.path = path

    def __call__(self, where: str, what: str) -> ValueError:
        return ValueError(f"{self.path}: {where}: {what}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _floats(value, shape: tuple, dtype: str, where: str, bad: _Invalid) -> np.ndarray:
    """A nested list of float strings of exactly ``shape`` (``None``: any length), as a ``dtype`` array."""
    try:
        obj = np.asarray(value, dtype=object)
    except ValueError:  # a ragged nesting NumPy refuses
        raise bad(where, f"expected rows of equal length, got {_short(value)}") from None
    if obj.ndim != len(shape) or any(want is not None and got != want for got, want in zip(obj.shape, shape)):
        want = " × ".join("N" if w is None else str(w) for w in shape)
        rows = " (rows of equal length)" if len(shape) > 1 else ""
        raise bad(where, f"expected {want} float strings{rows}, got shape {obj.shape}")
    for i, s in enumerate(obj.ravel()):
        if not isinstance(s, str):
            raise bad(where, f"element {i}: expected a float as a JSON string (\"0.1\", \"-inf\"), got {_short(s)}")
        try:
            float(s)
        except ValueError:
            raise bad(where, f"element {i}: {s!r} is not a decimal float") from None
    return parse_floats(obj, dtype)


def _parameter(case: dict, key: str, where: str, bad: _Invalid) -> float:
    """γ, b or ε: a float64 string in [0, 1]."""
    value = case.get(key)
    if not isinstance(value, str):
        raise bad(f"{where}.{key}", f"expected a float as a JSON string, got {_short(value)}")
    try:
        x = float(value)
    except ValueError:
        raise bad(f"{where}.{key}", f"{value!r} is not a decimal float") from None
    if not 0.0 <= x <= 1.0:
        raise bad(f"{where}.{key}", f"{value} is outside [0, 1]")
    return x


def _read(path, text: str, names) -> list[Case]:
    """The cases of one file, every field checked against the format (version 1)."""
    bad = _Invalid(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{path}: not a golden-vector file (format {FORMAT!r}, version {VERSION})")
    regime = doc.get("regime")
    stem = path.name.removesuffix(".json")
    if regime != stem:
        raise bad("regime", f"expected the file's name without .json, {stem!r}, got {_short(regime)}")
    if names is not None and regime not in names:
        return []
    if doc.get("reduction") != "none":
        raise bad("reduction", f'expected "none", got {_short(doc.get("reduction"))}')
    cases = []
    for dtype in DTYPES:
        group = doc.get(dtype)
        if not isinstance(group, dict):
            raise bad(dtype, f"expected the {dtype} group (an object), got {_short(group)}")
        logits = _floats(group.get("logits"), (None, None), dtype, f"{dtype}.logits", bad)
        n, n_classes = logits.shape
        if n == 0 or n_classes == 0:
            raise bad(f"{dtype}.logits", f"expected at least one row and one class, got shape {logits.shape}")
        targets = group.get("targets")
        if not isinstance(targets, list) or len(targets) != n:
            raise bad(f"{dtype}.targets", f"expected {n} integers (one per row of logits), got {_short(targets)}")
        for i, t in enumerate(targets):
            if type(t) is not int:
                raise bad(f"{dtype}.targets[{i}]", f"expected an integer, got {_short(t)}")
            if not 0 <= t < n_classes:
                raise bad(f"{dtype}.targets[{i}]", f"{t} is outside [0, C) for C = {n_classes} classes")
        raw = group.get("cases")
        if not isinstance(raw, list) or not raw:
            raise bad(f"{dtype}.cases", f"expected a non-empty list of cases, got {_short(raw)}")
        for k, c in enumerate(raw):
            where = f"{dtype}.cases[{k}]"
            if not isinstance(c, dict):
                raise bad(where, f"expected an object, got {_short(c)}")
            loss = c.get("loss")
            if loss not in ("gamma_ce", "tailr"):
                raise bad(f"{where}.loss", f'expected "gamma_ce" or "tailr", got {_short(loss)}')
            if loss == "gamma_ce" and c.get("threshold") is not None:
                raise bad(f"{where}.threshold", f"expected null for gamma_ce, got {_short(c.get('threshold'))}")
            cases.append(Case(
                regime=regime, dtype=dtype, loss=loss, gamma=_parameter(c, "gamma", where, bad),
                threshold=_parameter(c, "threshold", where, bad) if loss == "tailr" else None,
                label_smoothing=_parameter(c, "label_smoothing", where, bad), logits=logits,
                targets=np.asarray(targets, dtype=np.int64),
                expected_loss=_floats(c.get("expected_loss"), (n,), dtype, f"{where}.expected_loss", bad),
                expected_grad=_floats(c.get("expected_grad"), (n, n_classes), dtype, f"{where}.expected_grad",
                                      bad)))
    return cases


def load(directory=None, names=None) -> list[Case]:
    """Every case of the golden-vector files in ``directory``, in file order.

    ``directory`` defaults to the vectors shipped in the package
    (:func:`shipped`); ``names`` restricts to those regimes.  Raises
    ``FileNotFoundError`` (naming the path) if ``directory`` does not exist
    or holds no ``*.json`` file, or if a regime of ``names`` has no file, so
    that a loop over the result never passes having checked nothing; raises
    ``ValueError`` naming the file and the field for a file that is not JSON
    or breaks the format: a missing or malformed field, a target outside
    ``[0, C)``, a ``loss`` other than ``"gamma_ce"`` / ``"tailr"``, γ, b or
    ε outside [0, 1], an expected value of the wrong shape.
    """
    root = shipped() if directory is None else Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"golden vectors: {root} is not a directory")
    files = sorted((p for p in root.iterdir() if p.name.endswith(".json") and p.is_file()), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"golden vectors: no *.json file in {root}")
    cases = []
    for path in files:
        cases += _read(path, path.read_text(encoding="utf-8"), None if names is None else set(names))
    if names is not None:
        missing = sorted(set(names) - {c.regime for c in cases})
        if missing:
            raise FileNotFoundError(f"golden vectors: no file for regime(s) {', '.join(missing)} in {root}")
    return cases
