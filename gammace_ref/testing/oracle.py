"""Check another implementation of γ-CE or TaiLr against the 60-digit ground truth.

>>> from gammace_ref.testing import check_implementation
>>> report = check_implementation(my_loss, loss="gamma_ce", backend="torch")  # doctest: +SKIP
>>> report.passed, print(report)                                               # doctest: +SKIP

``candidate(logits, targets, gamma)`` (for TaiLr ``candidate(logits, targets,
gamma, threshold)``) receives arrays of the chosen backend -- logits ``(N, C)``
with the class axis last, integer targets ``(N,)`` -- and returns the N
per-example losses.  Its gradient is taken from the framework's autodiff
(``torch``: ``loss.sum().backward()``; ``jax``/``jax.jit``: ``jax.grad``), or
from ``grad(logits, targets, gamma[, threshold])`` when given (the gradient
of the sum of the per-example losses); without either, only values are
checked (the report says so).

The battery is every regime of :mod:`gammace_ref.testing.regimes` (p → 1,
p → 0, ±huge and -inf logits, ties, C = 1, 2 and a large vocabulary) at every
γ of ``regimes.GAMMAS``, plus random cases, in each float dtype (float64,
float32) the candidate accepts: a dtype for which it raises is reported as
not accepted, and a candidate that accepts none fails.  Each (case, dtype)
is judged by the worst relative error of value and gradient against
``regimes.TOLERANCE`` (1e-12 in float64, 2e-5 in float32); the report also
gives the error in ULPs of the dtype and the worst input.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from . import metrics, regimes, table

__all__ = ["Entry", "Report", "assert_matches_reference", "check_implementation"]

DTYPES = ("float64", "float32")
RANDOM_SHAPES = ((8, 3, 1.0), (8, 50, 5.0), (4, 1000, 10.0))  # (rows, classes, logit scale)


@dataclass
class Entry:
    """The worst error of one case family in one dtype."""

    case: str
    dtype: str
    value_rel: float
    grad_rel: float | None  # None: the gradient was not checked
    value_ulps: float
    grad_ulps: float | None
    tolerance: float
    worst: dict = field(default_factory=dict)  # the input that gave the worst error

    @property
    def passed(self) -> bool:
        errs = [self.value_rel] + ([] if self.grad_rel is None else [self.grad_rel])
        return max(errs) <= self.tolerance


@dataclass
class Report:
    """Outcome of :func:`check_implementation`: ``passed``, ``entries``, ``str(report)`` a table."""

    loss: str
    backend: str
    entries: list = field(default_factory=list)
    not_accepted: dict = field(default_factory=dict)  # dtype -> why the candidate refused it
    grad_checked: bool = True

    @property
    def passed(self) -> bool:
        return bool(self.entries) and all(e.passed for e in self.entries)

    @property
    def failures(self) -> list:
        return [e for e in self.entries if not e.passed]

    def __str__(self) -> str:
        rows = [[e.case, e.dtype, f"{e.value_rel:.2e}", "-" if e.grad_rel is None else f"{e.grad_rel:.2e}",
                 f"{e.value_ulps:.3g}", "-" if e.grad_ulps is None else f"{e.grad_ulps:.3g}", f"{e.tolerance:.0e}",
                 "ok" if e.passed else "FAIL"] for e in self.entries]
        lines = [f"{self.loss} on {self.backend}: {'PASSED' if self.passed else 'FAILED'}"
                 + ("" if self.grad_checked else " (values only: no gradient available)"),
                 table.render(["case", "dtype", "value rel", "grad rel", "value ulps", "grad ulps", "tol", "status"],
                              rows, align="<<>>>>><")]
        for dt, why in self.not_accepted.items():
            lines.append(f"{dt}: not accepted by the candidate ({why})")
        for e in self.failures:
            lines.append(f"worst input of {e.case}/{e.dtype}: {_short(e.worst)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "backend": self.backend, "passed": self.passed,
                "grad_checked": self.grad_checked, "not_accepted": self.not_accepted,
                "entries": [dict(e.__dict__, passed=e.passed) for e in self.entries]}


def _short(worst: dict) -> str:
    out = dict(worst)
    row = out.get("logits")
    if row is not None and len(row) > 8:
        out["logits"] = f"[{len(row)} values, max {max(row):.6g}, target's {row[out['target']]:.6g}]"
    return ", ".join(f"{k}={v}" for k, v in out.items())


def _cases(dtype: str, large_c: int, seed: int):
    """(name, logits array of dtype, exact float rows, targets, key) for the regimes and random cases."""
    for regime in regimes.regimes(dtype, large_c):
        arr, rows = regimes.as_dtype_rows(regime, dtype)
        yield regime.name, arr, rows, regime.targets, ("regime", regime.name)
    yield from _random_cases(dtype, seed)


def _random_cases(dtype: str, seed: int):
    rng = np.random.default_rng(seed)
    for n, c, scale in RANDOM_SHAPES:
        arr = (rng.standard_normal((n, c)) * scale).astype(dtype)
        y = tuple(int(v) for v in rng.integers(0, c, n))
        yield f"random C={c}", arr, [[float(v) for v in r] for r in arr], y, ("random", n, c, scale, seed)


@functools.lru_cache(maxsize=None)
def _random_reference(key, dtype, gamma, threshold):
    from . import reference

    for _, _, rows, y, k in _random_cases(dtype, key[-1]):
        if k == key:
            loss, grad = reference.batch(rows, y, gamma, threshold=threshold)
            return metrics.to_float64(loss), metrics.to_float64(grad)
    raise KeyError(key)


def _reference(key, dtype, large_c, gamma, threshold):
    if key[0] == "regime":
        return regimes.expected(key[1], dtype, gamma, threshold, large_c)
    return _random_reference(key, dtype, gamma, threshold)


def _evaluator(backend: str, candidate, grad, tailr: bool):
    """``run(z_np, y_np, gamma, threshold) -> (loss np, grad np or None)`` on ``backend``."""
    from .backends import Backend, BackendUnderTest

    b = BackendUnderTest(Backend(backend))
    args = (lambda g, t: (g, t)) if tailr else (lambda g, t: (g,))

    if grad is not None:
        def run(z, y, g, t):
            return b.run(candidate, z, y, *args(g, t)), b.run(grad, z, y, *args(g, t))
        return run, True
    if b.family == "torch":
        def run(z, y, g, t):
            zz = b.asarray(z).requires_grad_(True)
            loss = candidate(zz, b.asarray(y), *args(g, t))
            loss.sum().backward()
            return b.numpy(loss), b.numpy(zz.grad)
        return run, True
    if b.family == "jax":
        import jax

        def both(a, c, g, t):
            out, vjp = jax.vjp(lambda x: candidate(x, c, *args(g, t)), a)
            return out, vjp(jax.numpy.ones_like(out))[0]

        fn = b.compile(both)

        def run(z, y, g, t):
            return b.numpy(fn(b.asarray(z), b.asarray(y), g, t))
        return run, True

    def run(z, y, g, t):
        return b.run(candidate, z, y, *args(g, t)), None
    return run, False


def check_implementation(candidate, *, loss="gamma_ce", backend="numpy", grad=None, dtypes=DTYPES,
                         gammas=regimes.GAMMAS, threshold=regimes.TAILR_THRESHOLD, large_vocab=4096,
                         seed=0) -> Report:
    """Run ``candidate`` over the battery and judge it against mpmath; see the module docstring.

    ``loss`` is ``"gamma_ce"`` or ``"tailr"`` (threshold ``b = threshold``);
    ``backend`` a :class:`~gammace_ref.testing.backends.Backend` value
    (``"numpy"``, ``"torch"``, ``"jax"``, ``"jax.jit"``, ``"cupy"``, ...);
    ``large_vocab`` the class count of the large-vocabulary regime.
    """
    if loss not in ("gamma_ce", "tailr"):
        raise ValueError(f"loss must be 'gamma_ce' or 'tailr', got {loss!r}")
    tailr = loss == "tailr"
    b_ref = threshold if tailr else None
    run, has_grad = _evaluator(backend, candidate, grad, tailr)
    report = Report(loss=loss, backend=backend, grad_checked=has_grad)
    for dtype in dtypes:
        cases = list(_cases(dtype, large_vocab, seed))
        probe = cases[0]
        try:  # a dtype the candidate refuses is "not accepted", not a failure
            run(probe[1], np.asarray(probe[3], dtype=np.int64), gammas[0], threshold)
        except Exception as exc:  # noqa: BLE001 -- any refusal: the candidate's own error types
            report.not_accepted[dtype] = f"{type(exc).__name__}: {exc}"
            continue
        for name, arr, rows, y, key in cases:
            worst = [0.0, 0.0 if has_grad else None, 0.0, 0.0 if has_grad else None, {}]
            for g in gammas:
                try:
                    got_l, got_g = run(arr, np.asarray(y, dtype=np.int64), g, threshold)
                except Exception as exc:  # noqa: BLE001 -- a crash on a hard case is a failure
                    worst[0] = math.inf
                    worst[4] = {"gamma": g, "error": f"{type(exc).__name__}: {exc}"}
                    break
                ref_l, ref_g = _reference(key, dtype, large_vocab, g, b_ref)
                _update(worst, 0, got_l, ref_l, dtype, rows, y, g)
                if has_grad:
                    _update(worst, 1, got_g, ref_g, dtype, rows, y, g)
            report.entries.append(Entry(name, dtype, *worst[:4], regimes.TOLERANCE[dtype], worst[4]))
    return report


def _update(worst, slot, got, ref, dtype, rows, y, gamma):
    """Fold one result into ``worst = [value_rel, grad_rel, value_ulps, grad_ulps, worst_input]``."""
    n = len(rows)
    got = np.asarray(got, dtype=np.float64)
    if got.size != ref.size:
        raise ValueError(f"the candidate's {'gradient' if slot else 'loss'} has shape {got.shape}, expected "
                         f"{ref.shape}{'' if slot else ' (per-example losses)'}")
    g2, r2 = got.reshape(n, -1), ref.reshape(n, -1)
    rel = [metrics.rel_err(g2[i], r2[i], dtype) for i in range(n)]
    i = int(np.argmax(rel))
    if rel[i] > worst[slot]:
        tiny = float(np.finfo(dtype).tiny)
        with np.errstate(invalid="ignore"):
            j = int(np.argmax(np.nan_to_num(np.abs(g2[i] - r2[i]) / np.maximum(np.abs(r2[i]), tiny), nan=np.inf)))
        worst[slot] = rel[i]
        worst[4] = {"quantity": "gradient" if slot else "value", "gamma": gamma, "row": i, "target": int(y[i]),
                    **({"class": j} if slot else {}), "got": float(g2[i, j]), "expected": float(r2[i, j]),
                    "logits": rows[i]}
    worst[slot + 2] = max(worst[slot + 2], float(metrics.ulps(g2, r2, dtype).max(initial=0.0)))


def assert_matches_reference(candidate, **kwargs) -> Report:
    """:func:`check_implementation`, raising ``AssertionError`` with the report when it fails."""
    report = check_implementation(candidate, **kwargs)
    if not report.passed:
        raise AssertionError("the candidate does not match the gammace_ref reference:\n" + str(report))
    return report
