"""Check another implementation of γ-CE or TaiLr against the 60-digit ground truth.

>>> from gammace_ref.testing import check_implementation
>>> report = check_implementation(my_loss, loss="gamma_ce", backend="torch")  # doctest: +SKIP
>>> report.passed, print(report)                                               # doctest: +SKIP

**The call.** ``candidate(logits, targets, gamma)`` (TaiLr:
``candidate(logits, targets, gamma, threshold)``) receives arrays of the
chosen backend -- logits ``(N, C)`` of the dtype under test with the class
axis last, int64 targets ``(N,)`` -- and returns the N per-example losses.
With any of ``reduction``, ``ignore_index``, ``label_smoothing`` given it is
called the way a training loss is, with keyword arguments:
``candidate(logits, targets, gamma, reduction=..., label_smoothing=...,
ignore_index=...)`` -- ``reduction`` (``"none"`` unless given) and
``label_smoothing`` (0.0 unless given) always, so the candidate's own
defaults never decide what is checked, ``ignore_index`` when given (then
the battery has ignored rows and an all-ignored batch).  It returns the N
losses (``"none"``) or one number (``"mean"`` over the counted rows, 0 for
none; ``"sum"``).

**The gradient** of the sum of the outputs comes from the backend's autodiff
(torch: ``torch.autograd.grad``; JAX: ``jax.vjp``, under ``jax.jit``
compiled once per shape and dtype with γ traced -- or static where the
candidate cannot take a traced γ, which the report notes), or from
``grad(logits, targets, gamma[, threshold], **options)`` when given; without
either, only values are checked (the report says so).

**The battery** is every regime of :mod:`gammace_ref.testing.regimes` (p → 1,
p → 0, ±huge and -inf logits, ties, C = 1, 2 and a large vocabulary) at every
γ of ``gammas``, plus random cases, built for each dtype in ``dtypes``
(``"float64"``, ``"float32"``, ``"bfloat16"``, ``"float16"``: the logits are
rounded to it and the reference is exact for what the candidate received).
A dtype the candidate raises on for an ordinary input (``moderate``) is
reported as not accepted; a candidate that accepts none fails.  A dtype the
backend cannot carry (NumPy has no bfloat16) is reported as not run.

**The judgement** (:mod:`gammace_ref.testing.judge`): each result in the
dtype the candidate returned it in -- float64 1e-12, float32 2e-5 relative,
the 16-bit formats 1 ulp plus the float32 compute error, with their smallest
normal number as an absolute floor.  ``profile="reference"`` judges every
gradient component; ``profile="kernel"`` judges the gradient norm-wise per
row against the size of the terms it is formed from (what a float32-compute
kernel can promise) and the values exactly as before.  A candidate that
raises, returns the wrong shape, a non-float result or NaN on a case fails
that entry (the report says which γ); a call that does not return within
``timeout`` seconds fails the check (TIMEOUT).

**Second order** (``order=2``): each case also gets a fixed direction ``v``
(standard normal, seeded by the case, rounded to the dtype under test), and
the candidate's Hessian-vector product of the sum of its outputs along ``v``
-- torch: ``torch.autograd.grad(..., create_graph=True)`` then the
gradient's backward along ``v``; JAX: ``jax.jvp`` of the gradient (forward
over reverse, under ``jax.jit`` for ``"jax.jit"``); elsewhere, or when given,
``hvp(logits, targets, gamma[, threshold], v, **options)`` -- is judged as
the quantity ``hvp`` against the mpmath closed form
(:func:`gammace_ref.testing.reference.hvp_row`; TaiLr's ``W`` held constant,
the Hessian of ``-stop_gradient(W)·log p``), norm-wise per row: relative to
the reference row (``profile="reference"``) or to the size of the terms it
is formed from (``profile="kernel"``).  A gradient without autograd history
after ``create_graph=True`` (a backward that is not differentiable, whose
Hessian a double backward would silently take as 0) fails the case.

The report has the worst input per (case, dtype, quantity), every failing γ,
relative, ULP and absolute errors; ``Report.to_dict()`` is its JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import zlib
from dataclasses import dataclass

import numpy as np

from . import judge, metrics, regimes
from .formats import round_array
from .report import Check, Entry, Report
from .runner import CandidateError, CandidateTimeout, Runner, jax_x64

__all__ = ["DTYPES", "Entry", "Report", "assert_matches_reference", "check_implementation"]

DTYPES = ("float64", "float32")
ALL_DTYPES = ("float64", "float32", "bfloat16", "float16")
RANDOM_SHAPES = ((8, 3, 1.0), (8, 50, 5.0), (4, 1000, 10.0))  # (rows, classes, logit scale)
REDUCTIONS = ("none", "mean", "sum")
PROBE = "moderate"  # the ordinary case a dtype is probed with
ORDERS = (1, 2)


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Settings:
    """What one check runs: the loss and the options passed to the candidate."""

    loss: str
    threshold: float | None  # TaiLr's b (None for γ-CE)
    training: bool  # options passed as keyword arguments
    reduction: str
    ignore_index: int | None
    label_smoothing: float
    profile: str

    def keywords(self) -> dict:
        if not self.training:
            return {}
        kw = {"reduction": self.reduction, "label_smoothing": self.label_smoothing}
        if self.ignore_index is not None:
            kw["ignore_index"] = self.ignore_index
        return kw


def settings(loss, threshold, reduction, ignore_index, label_smoothing, profile, gammas, dtypes) -> Settings:
    """Check the arguments of a check (ValueError/TypeError naming the argument) and bundle them."""
    if loss not in ("gamma_ce", "tailr"):
        raise ValueError(f"loss must be 'gamma_ce' or 'tailr', got {loss!r}")
    if profile not in judge.PROFILES:
        raise ValueError(f"profile must be one of {judge.PROFILES}, got {profile!r}")
    if reduction is not None and reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS} or None, got {reduction!r}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if label_smoothing is not None and not (isinstance(label_smoothing, (int, float))
                                            and 0.0 <= label_smoothing < 1.0):
        raise ValueError(f"label_smoothing must be a number in [0, 1) or None, got {label_smoothing!r}")
    gammas = tuple(gammas)
    if not gammas or any(not isinstance(g, (int, float)) or not 0.0 <= g <= 1.0 for g in gammas):
        raise ValueError(f"gammas must be numbers in [0, 1], got {gammas!r}")
    bad = [d for d in dtypes if d not in ALL_DTYPES]
    if bad or not dtypes:
        raise ValueError(f"dtypes must be some of {ALL_DTYPES}, got {tuple(dtypes)!r}")
    if loss == "tailr" and not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    training = reduction is not None or ignore_index is not None or label_smoothing is not None
    return Settings(loss, float(threshold) if loss == "tailr" else None, training, reduction or "none",
                    ignore_index, float(label_smoothing or 0.0), profile)


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One batch of the battery: ``inputs`` (name → NumPy array of the dtype's storage) and ``targets``."""

    name: str
    key: tuple
    inputs: dict
    targets: tuple
    rows: tuple  # the exact logits, as Python floats (for the reference and the report)

    @property
    def n(self) -> int:
        return len(self.targets)


def _base_cases(dtype: str, large_c: int, seed: int):
    for regime in regimes.regimes(dtype, large_c):
        arr, rows = regimes.as_dtype_rows(regime, dtype)
        yield regime.name, arr, rows, tuple(int(t) for t in regime.targets)
    rng = np.random.default_rng(seed)
    for n, c, scale in RANDOM_SHAPES:
        draw = rng.standard_normal((n, c)) * scale
        y = tuple(int(v) for v in rng.integers(0, c, n))
        arr = round_array(draw, dtype)
        yield f"random C={c}", arr, [[float(v) for v in r] for r in arr], y


@functools.lru_cache(maxsize=16)
def battery(dtype: str, large_c: int, seed: int, ignore_index) -> tuple:
    """The battery in ``dtype``; with ``ignore_index``, each batch gains ignored rows and there is an
    all-ignored batch (ignored rows hold finite logits copied from the batch)."""
    out = []
    for name, arr, rows, y in _base_cases(dtype, large_c, seed):
        if ignore_index is not None:
            # An ignored row after the first and one at the end: a mean over N instead of the counted
            # rows, or a row whose gradient leaks, shows in every batch.
            order = [0, -1] + list(range(1, len(rows))) + [-2]
            src = [0, len(rows) - 1] + list(range(1, len(rows))) + [0]
            rows = [rows[s] for s in src]
            arr = arr[src]
            y = tuple(ignore_index if o < 0 else y[o] for o in order)
        out.append(Case(name, (name, dtype, large_c, seed, ignore_index), {"logits": arr},
                        y, tuple(tuple(r) for r in rows)))
    if ignore_index is not None:
        base = out[[c.name for c in out].index(PROBE)]
        out.append(Case("all_ignored", ("all_ignored", dtype, large_c, seed, ignore_index), base.inputs,
                        (ignore_index,) * base.n, base.rows))
    return tuple(out)


def _find(dtype, large_c, seed, ignore_index, name) -> Case:
    return next(c for c in battery(dtype, large_c, seed, ignore_index) if c.name == name)


@dataclass
class Expected:
    value: np.ndarray  # (N,) or ()
    grads: dict  # name -> (reference float64 array, magnitude float64 array or None[, magnitude shown])
    value_scale: np.ndarray | None = None  # what the value's error is judged against (None: |value|)
    shown: bool = False  # report relative errors against |value| / the third magnitude, not the judged scale
    hvp: tuple | None = None  # (reference (N, C), magnitude (N, C)) of the Hessian-vector product (order 2)


def needs_magnitude(s: Settings):
    """Which magnitude the gradient is judged against: ``"onehot"`` (profile kernel), ``"terms"`` (profile
    reference with label smoothing: each component relative to the terms it is the difference of) or
    ``None`` (relative to itself)."""
    if s.profile == "kernel":
        return "onehot"
    return "terms" if s.label_smoothing else None


@functools.lru_cache(maxsize=None)
def _expected(key, gamma, s: Settings) -> Expected:
    from . import reference

    name, dtype, large_c, seed, ignore_index = key
    case = _find(dtype, large_c, seed, ignore_index, name)
    loss, grad = reference.batch(case.rows, case.targets, gamma, threshold=s.threshold,
                                 label_smoothing=s.label_smoothing, reduction=s.reduction,
                                 ignore_index=ignore_index)
    kind = needs_magnitude(s)
    mag = None if kind is None else magnitudes(case.rows, case.targets, gamma, s, ignore_index, kind == "onehot")
    return Expected(metrics.to_float64(loss), {"logits": (metrics.to_float64(grad), mag)})


def magnitudes(rows, targets, gamma, s: Settings, ignore_index, onehot: bool) -> np.ndarray:
    """:func:`gammace_ref.testing.reference.magnitude` of every row (0 for ignored ones), scaled as the
    reduction scales the gradient; float64 ``(N, C)``.

    A tolerance scale needs no 60 digits: this is the same formula in float64
    (softmax from the exact logits, ``1 - p_y`` summed from the other classes),
    within about ``|z|·eps`` of the mpmath value.
    """
    z = np.array([[float(v) for v in r] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    y = np.asarray(targets)
    counted = np.array([ignore_index is None or t != ignore_index for t in targets], dtype=bool)
    out = np.zeros(z.shape)
    if not counted.any() or z.shape[1] == 0:
        return out
    z, y = z[counted], y[counted]
    n_classes = z.shape[1]
    with np.errstate(invalid="ignore", over="ignore", under="ignore", divide="ignore"):
        top = np.max(z, axis=1, keepdims=True)
        e = np.exp(z - top)
        p = e / e.sum(axis=1, keepdims=True)
        rows_ = np.arange(len(y))
        p_y = p[rows_, y]
        others = p.copy()
        others[rows_, y] = 0.0
        q = others.sum(axis=1)
        w = np.ones_like(p_y) if gamma == 0 else p_y / (gamma + (1 - gamma) * p_y)
        if s.threshold is not None:
            w = np.clip(w, s.threshold, 1.0)
        eps = s.label_smoothing
        k = (1 - eps) * w
        m = (k + eps)[:, None] * p + eps / n_classes
        m[rows_, y] = (k + (k + eps) * p_y if onehot else k * q + eps * p_y) + eps / n_classes
    scale = 1.0 / max(int(counted.sum()), 1) if s.reduction == "mean" else 1.0
    out[counted] = np.nan_to_num(m, nan=0.0) * scale
    return out


# --------------------------------------------------------------------------- second order


@functools.lru_cache(maxsize=64)
def _direction(key, shape) -> tuple:
    """``(array, rows)``: the direction of case ``key`` (standard normal, seeded by the case, rounded to its
    dtype ``key[1]``) as the storage array and as Python floats per row."""
    rng = np.random.default_rng(zlib.crc32(repr(key).encode()))
    arr = round_array(rng.standard_normal(shape), key[1])
    return arr, tuple(tuple(float(x) for x in r) for r in arr.reshape(shape[0], -1))


def direction(case: Case) -> np.ndarray:
    """The direction ``v`` the Hessian-vector product of ``case`` is taken along (the logits' shape)."""
    return _direction(case.key, case.inputs["logits"].shape)[0]


@functools.lru_cache(maxsize=None)
def _expected_hvp(key, gamma, s: Settings) -> tuple:
    """``(reference, magnitude)`` of the Hessian-vector product of the sum of the outputs, float64 ``(N, C)``."""
    from . import reference

    name, dtype, large_c, seed, ignore_index = key
    case = _find(dtype, large_c, seed, ignore_index, name)
    _, vrows = _direction(case.key, case.inputs["logits"].shape)
    counted = [ignore_index is None or t != ignore_index for t in case.targets]
    ref = np.zeros((case.n, len(case.rows[0])))
    for i, (r, t, vr) in enumerate(zip(case.rows, case.targets, vrows)):
        if counted[i]:
            ref[i] = metrics.to_float64(reference.hvp_row(r, t, vr, gamma, s.threshold, s.label_smoothing))
    scale = 1.0 / max(sum(counted), 1) if s.reduction == "mean" else 1.0
    ref *= scale
    if s.profile != "kernel":
        return ref, np.abs(ref)
    return ref, hvp_magnitudes(case.rows, case.targets, vrows, gamma, s, counted) * scale


def hvp_magnitudes(rows, targets, vrows, gamma, s: Settings, counted) -> np.ndarray:
    """The size of the terms of ``H·v = K·(s⊙v - s·(sᵀv)) - R·(s - e)·((s - e)ᵀv)`` per component (float64).

    ``K·(s⊙|v| + s·(sᵀ|v|)) + |R|·(s + e)·((s + e)ᵀ|v|)``: what a float32 kernel
    forming ``s - e`` and the two dot products in floating point can be
    judged against (profile ``kernel``), as :func:`magnitudes` is for the
    gradient.  ``K = (1-ε)·w + ε``, ``R = (1-ε)·w·γ/(γ + (1-γ)p)`` (γ-CE;
    TaiLr ``K = (1-ε)·W + ε``, ``R = 0``).
    """
    z = np.array([[float(x) for x in r] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    v = np.abs(np.array(vrows, dtype=np.float64).reshape(z.shape))
    y = np.array([t if c else 0 for t, c in zip(targets, counted)])
    out = np.zeros(z.shape)
    if z.shape[1] == 0:
        return out
    with np.errstate(invalid="ignore", over="ignore", under="ignore", divide="ignore"):
        e = np.exp(z - np.max(z, axis=1, keepdims=True))
        sm = e / e.sum(axis=1, keepdims=True)
        p = sm[np.arange(len(y)), y]
        u = gamma + (1 - gamma) * p
        w = np.ones_like(p) if gamma == 0 else p / u
        eps = s.label_smoothing
        if s.threshold is not None:
            K, R = (1 - eps) * np.clip(w, s.threshold, 1.0) + eps, np.zeros_like(p)
        else:
            K, R = (1 - eps) * w + eps, np.zeros_like(p) if gamma == 0 else (1 - eps) * w * gamma / u
        onehot = np.zeros_like(sm)
        onehot[np.arange(len(y)), y] = 1.0
        se = sm + onehot
        m = (K[:, None] * (sm * v + sm * np.sum(sm * v, axis=1, keepdims=True))
             + R[:, None] * se * np.sum(se * v, axis=1, keepdims=True))
    out[np.asarray(counted)] = np.nan_to_num(m, nan=0.0)[np.asarray(counted)]
    return out


# --------------------------------------------------------------------------- the loop


def run_battery(report: Report, runner: Runner, s: Settings, dtypes, gammas, cases_of, expected_of,
                grad_rule, describe, shapes_of, only=None, direction_of=None):
    """Run every case of every dtype at every γ and fold the verdicts into ``report``.

    ``cases_of(dtype)`` lists the :class:`Case` objects; ``expected_of(case,
    γ)`` gives an :class:`Expected`; ``grad_rule(name)`` is ``"element"`` or
    ``"row"``; ``describe(case, quantity, where)`` the worst-input dict;
    ``shapes_of(case)`` maps each gradient name to its shape;
    ``direction_of(case)`` (second order) the direction of the Hessian-vector
    product, judged norm-wise per row as ``hvp``.
    """
    for n, dtype in enumerate(dtypes):
        if runner.timed_out:
            report.notes.append(f"not run after the timeout: {', '.join(dtypes[n:])}")
            return
        why = runner.cannot_carry(dtype)
        if why:
            report.unsupported[dtype] = why
            continue
        chosen = select(cases_of(dtype), only)
        probe = next((c for c in chosen if c.name == PROBE), chosen[0])
        g_probe = gammas[len(gammas) // 2]  # an ordinary γ of those asked for (0.5 by default)
        try:
            runner.run(probe.inputs, dtype, np.asarray(probe.targets, dtype=np.int64), g_probe, s.threshold)
        except CandidateTimeout as exc:
            report.entries.append(Entry(probe.name, dtype, tolerance=judge.REL[dtype], error=str(exc),
                                        error_kind="TIMEOUT", error_gammas=[g_probe]))
            continue
        except Exception as exc:  # noqa: BLE001 -- any refusal: the candidate's own error types
            report.not_accepted[dtype] = _message(exc)
            continue
        for case in chosen:
            if runner.timed_out:
                report.notes.append(f"not run after the timeout: the rest of {dtype}")
                break
            entry = Entry(case.name, dtype, tolerance=judge.REL[dtype])
            report.entries.append(entry)
            y = np.asarray(case.targets, dtype=np.int64)
            for g in gammas:
                try:
                    res = runner.run(case.inputs, dtype, y, g, s.threshold,
                                     direction=direction_of(case) if direction_of else None)
                except CandidateTimeout as exc:
                    entry.error, entry.error_kind = str(exc), "TIMEOUT"
                    entry.error_gammas.append(g)
                    break
                except Exception as exc:  # noqa: BLE001 -- a crash on a hard case is a failure
                    _error(entry, g, _message(exc), "ERROR")
                    continue
                exp = expected_of(case, g)
                problem = _shape_problem(res, exp, shapes_of(case), runner.grad_checked)
                if problem:
                    _error(entry, g, problem, "FAIL")
                    continue
                _judge(entry, "value", res.value, res.value_format, exp.value, exp.value_scale, "element", g, case,
                       describe, np.zeros(()) if exp.shown else None)
                for name, (ref, mag, *shown) in exp.grads.items():
                    if name not in res.grads:
                        continue
                    rule = grad_rule(name)
                    _judge(entry, "grad" if name == "logits" else f"d_{name}", res.grads[name],
                           res.grad_formats[name], ref, mag, rule, g, case, describe, shown[0] if shown else None)
                if direction_of is not None:
                    ref, mag = exp.hvp
                    _judge(entry, "hvp", res.hvp, res.hvp_format, ref, mag, "row", g, case, describe)


def select(battery, only):
    """The cases of ``battery`` named in ``only`` (all when ``None``); ValueError for an unknown name."""
    if only is None:
        return battery
    names = [c.name for c in battery]
    unknown = [n for n in only if n not in names]
    if unknown or not only:
        raise ValueError(f"cases must name some of {names}, got {list(only)!r}")
    return tuple(c for c in battery if c.name in only)


def _message(exc) -> str:
    if isinstance(exc, CandidateError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _error(entry: Entry, gamma, message: str, kind: str):
    if entry.error is None:
        entry.error, entry.error_kind = message, kind
    entry.error_gammas.append(gamma)


def _shape_problem(res, exp: Expected, grad_shapes: dict, grad_checked: bool) -> str | None:
    want = exp.value.shape
    got = res.value.shape
    if want == () and res.value.size != 1:
        return f"the loss has shape {got}, expected a single number (reduction)"
    if want != () and got != want:
        return f"the loss has shape {got}, expected {want} (one loss per example)"
    for name, shape in grad_shapes.items():
        if name in res.grads and res.grads[name].shape != shape:
            return f"the gradient with respect to {name} has shape {res.grads[name].shape}, expected {shape}"
        if grad_checked and name not in res.grads:
            return f"no gradient with respect to {name}"
    if exp.hvp is not None:
        if res.hvp is None:
            return "no Hessian-vector product"
        if res.hvp.shape != exp.hvp[0].shape:
            return f"the Hessian-vector product has shape {res.hvp.shape}, expected {exp.hvp[0].shape}"
        if res.hvp_format not in judge.REL:
            return f"the Hessian-vector product has dtype {res.hvp_format}, not a floating-point format the oracle judges"
    for what, fmt in [("loss", res.value_format), *((f"gradient ({n})", f) for n, f in res.grad_formats.items())]:
        if fmt not in judge.REL:
            return f"the {what} has dtype {fmt}, not a floating-point format the oracle judges"
    return None


def _judge(entry: Entry, quantity, got, fmt, ref, magnitude, rule, gamma, case, describe, shown=None):
    got = np.reshape(got, ref.shape) if ref.shape == () else got
    if rule == "element":
        v = judge.elementwise(got, ref, fmt, magnitude, shown)
    else:
        v = judge.rowwise(got, ref, magnitude, fmt, shown)
    rule_text = judge.rule_text(fmt, rule == "row") + ("·κ" if shown is not None else "")
    check = entry.checks.get(quantity)
    if check is None:
        check = entry.checks[quantity] = Check(quantity, rule_text, fmt)
    check.format = fmt
    check.rule = rule_text
    check.err = max(check.err, v.err)
    check.ulps = max(check.ulps, v.ulps)
    check.abs = max(check.abs, v.abs)
    if not v.passed:
        check.failing_gammas.append(gamma)
    if v.ratio > check.ratio or not check.worst:
        check.ratio = max(check.ratio, v.ratio)
        g = np.asarray(got, dtype=np.float64)
        r = np.asarray(ref, dtype=np.float64)
        idx = v.where
        worst = {"quantity": quantity, "gamma": gamma}
        if idx or g.shape == ():
            worst["got"] = float(g[idx]) if g.ndim == len(idx) else None
            worst["expected"] = float(r[idx]) if r.ndim == len(idx) else None
        if rule == "row" and len(idx) == 2:
            worst["row_error_norm"] = float(np.linalg.norm(np.nan_to_num(g[idx[0]] - r[idx[0]], nan=np.inf)))
        worst.update(describe(case, quantity, idx))
        check.worst = worst


# --------------------------------------------------------------------------- logits


def _describe_logits(case: Case, quantity, idx) -> dict:
    if not idx:
        return {"batch": f"{case.n} rows, targets {list(case.targets)}"}
    i = idx[0]
    out = {"row": i, "target": int(case.targets[i])}
    if quantity in ("grad", "hvp") and len(idx) > 1:
        out["class"] = idx[1]
    out["logits"] = list(case.rows[i])
    return out


def check_implementation(candidate, *, loss="gamma_ce", backend="numpy", grad=None, dtypes=DTYPES,
                         gammas=regimes.GAMMAS, threshold=regimes.TAILR_THRESHOLD, large_vocab=4096,
                         seed=0, reduction=None, ignore_index=None, label_smoothing=None,
                         profile="reference", timeout=None, static_gamma=None, cases=None, order=1,
                         hvp=None) -> Report:
    """Run ``candidate`` over the battery and judge it against mpmath; see the module docstring.

    Parameters
    ----------
    candidate : callable
        ``candidate(logits, targets, gamma[, threshold], **options)``.
    loss : {"gamma_ce", "tailr"}
        TaiLr is called with ``threshold`` (its ``b``) after γ.
    backend : str
        A :class:`~gammace_ref.testing.backends.Backend` value: ``"numpy"``,
        ``"array_api_strict"``, ``"torch"``, ``"torch.cuda"``, ``"jax"``,
        ``"jax.jit"``, ``"cupy"``, ``"dask"``.
    grad : callable, optional
        The gradient of the sum of the outputs with respect to the logits,
        called like ``candidate`` (needed where the backend has no autodiff).
    dtypes : sequence of str
        Among ``"float64"``, ``"float32"``, ``"bfloat16"``, ``"float16"``.
    gammas : sequence of float
        The γ values (default ``regimes.GAMMAS``: 0, 1e-7, 0.1, 0.5, 0.8, 1-1e-9, 1).
    reduction, ignore_index, label_smoothing : optional
        Any of them given: the candidate is called with them as keyword
        arguments (``reduction`` and ``label_smoothing`` always); see the
        module docstring.
    profile : {"reference", "kernel"}
        How gradients are judged (:mod:`gammace_ref.testing.judge`).
    timeout : float, optional
        Seconds allowed per call (value and gradient); a call that does not
        return fails the check as TIMEOUT.  ``None``: no limit, the calls run
        in this thread.
    static_gamma : bool, optional
        Under ``jax.jit``: ``None`` traces γ and falls back to a static γ if
        the candidate cannot take a traced one (noted in the report);
        ``True`` always static; ``False`` traced only.
    large_vocab, seed : int
        The class count of the ``huge_vocab`` regime; the seed of the random cases.
    cases : sequence of str, optional
        Only these cases of the battery (by name: ``"p_to_1"``, ``"random C=50"``, ...).
    order : {1, 2}
        2: also judge the Hessian-vector product of the sum of the outputs
        along a fixed direction per case (quantity ``hvp``; see the module
        docstring), from the backend's autodiff of the gradient or ``hvp``.
    hvp : callable, optional
        ``hvp(logits, targets, gamma[, threshold], v, **options)``: the
        Hessian-vector product (needed for ``order=2`` where the backend has
        no autodiff; :func:`gammace_ref.gamma_ce_hvp` has this signature).

    Returns
    -------
    Report
    """
    s = settings(loss, threshold, reduction, ignore_index, label_smoothing, profile, gammas, dtypes)
    start = time.perf_counter()
    from .backends import Backend

    family = Backend(backend).family
    if order not in ORDERS or isinstance(order, bool):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if hvp is not None and not callable(hvp):
        raise TypeError(f"hvp must be callable or None, got {hvp!r}")
    if order == 2 and hvp is None and family not in ("torch", "jax"):
        raise ValueError(f"order=2 on backend {str(backend)!r} needs hvp= (the Hessian-vector product): only "
                         "torch and JAX have an autodiff to differentiate the gradient with")
    with jax_x64(family == "jax"):
        runner = Runner(backend, candidate, grad=grad, hvp=hvp, scalars=("gamma", "threshold")
                        if s.threshold is not None else ("gamma",), options=s.keywords(), timeout=timeout,
                        static_gamma=static_gamma)
        report = Report(loss=loss, backend=str(backend), grad_checked=runner.grad_checked, profile=profile,
                        options=s.keywords(), order=order)
        def expected_of(case, g):
            exp = _expected(case.key, g, s)
            if order == 2:
                exp = dataclasses.replace(exp, hvp=_expected_hvp(case.key, g, s))
            return exp

        run_battery(report, runner, s, tuple(dtypes), tuple(gammas),
                    lambda d: battery(d, large_vocab, seed, s.ignore_index), expected_of,
                    lambda name: "row" if profile == "kernel" else "element", _describe_logits,
                    lambda case: {"logits": case.inputs["logits"].shape}, only=cases,
                    direction_of=direction if order == 2 else None)
    report.notes.extend(runner.notes)
    report.seconds = time.perf_counter() - start
    if family == "jax":
        report.compilations = runner.traces
    return report


def assert_matches_reference(candidate, **kwargs) -> Report:
    """:func:`check_implementation`, raising ``AssertionError`` with the report when it fails."""
    report = check_implementation(candidate, **kwargs)
    if not report.passed:
        raise AssertionError("the candidate does not match the gammace_ref reference:\n" + str(report))
    return report
