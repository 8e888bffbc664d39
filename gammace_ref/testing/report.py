"""The oracle's verdict: :class:`Report` of :class:`Entry` (a case in a dtype) of :class:`Check` (a quantity).

``str(report)`` is a table with one row per (case, dtype, quantity) -- the
judged error, the error in ULPs of the result's format, the absolute error,
the rule, the status -- followed by one line per failure naming the quantity,
every γ at which it fails and its worst input.  ``report.to_dict()`` is the
same as JSON-ready data (``gammace-ref check --json``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from . import table

__all__ = ["Check", "Entry", "Report"]

GRADIENTS = ("grad", "d_hidden", "d_weight", "d_bias")


@dataclass
class Check:
    """One quantity (``"value"``, ``"grad"``, ``"d_hidden"``, ...) of one case in one dtype, worst over γ."""

    quantity: str
    rule: str = ""  # the tolerance, as the table shows it
    format: str | None = None  # the dtype the candidate returned it in
    err: float = 0.0  # judged error: relative, element-wise or norm-wise per row (see judge)
    ratio: float = 0.0  # err / allowed: ≤ 1 passes
    ulps: float = 0.0
    abs: float = 0.0
    failing_gammas: list = field(default_factory=list)
    worst: dict = field(default_factory=dict)  # the input with the largest ratio

    @property
    def passed(self) -> bool:
        return self.ratio <= 1.0


@dataclass
class Entry:
    """One case family in one dtype: a :class:`Check` per quantity, or the error that stopped it.

    ``status`` is ``"ok"``, ``"FAIL"`` (a check beyond its tolerance, a wrong
    shape or dtype, NaN), ``"ERROR"`` (the candidate raised) or
    ``"TIMEOUT"``; ``error`` says what happened, ``error_gammas`` where.
    """

    case: str
    dtype: str
    checks: dict = field(default_factory=dict)  # quantity -> Check
    tolerance: float = 0.0  # the relative tolerance of the input dtype
    error: str | None = None
    error_kind: str | None = None  # "ERROR", "FAIL" (wrong shape / dtype), "TIMEOUT"
    error_gammas: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks.values())

    @property
    def status(self) -> str:
        if self.error_kind == "TIMEOUT":
            return "TIMEOUT"
        if self.error is not None:
            return self.error_kind or "ERROR"
        return "ok" if self.passed else "FAIL"

    # The fields of the first version of the report (one value and one gradient per entry).
    def _get(self, quantity, attr):
        c = self.checks.get(quantity)
        if c is None and quantity == "grad":
            grads = [self.checks[q] for q in GRADIENTS if q in self.checks]
            c = max(grads, key=lambda k: k.ratio) if grads else None
        return None if c is None else getattr(c, attr)

    @property
    def value_rel(self):
        v = self._get("value", "err")
        return math.inf if v is None and self.error else (v or 0.0)

    @property
    def grad_rel(self):
        return self._get("grad", "err")

    @property
    def value_ulps(self):
        return self._get("value", "ulps") or 0.0

    @property
    def grad_ulps(self):
        return self._get("grad", "ulps")

    @property
    def worst(self) -> dict:
        """The worst input: of the failing check with the largest ratio (or of the error), else of any check."""
        if self.error is not None:
            return {"gamma": self.error_gammas[0] if self.error_gammas else None, "error": self.error}
        if not self.checks:
            return {}
        return max(self.checks.values(), key=lambda c: c.ratio).worst

    def to_dict(self) -> dict:
        return _json({"case": self.case, "dtype": self.dtype, "status": self.status, "passed": self.passed,
                      "tolerance": self.tolerance, "error": self.error, "error_gammas": self.error_gammas,
                      "value_rel": self.value_rel, "grad_rel": self.grad_rel,
                      "checks": {q: {**asdict(c), "passed": c.passed} for q, c in self.checks.items()}})


def _json(v):
    """Strict JSON data: non-finite floats as the strings "inf", "-inf", "nan"; tuples as lists."""
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {str(k): _json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    return v


@dataclass
class Report:
    """Outcome of :func:`~gammace_ref.testing.check_implementation` / ``check_linear_implementation``.

    ``passed``: at least one dtype was accepted and every entry passed, no
    call timed out.  ``entries``, ``failures``; ``not_accepted`` (dtype → why
    the candidate refused it: raised on an ordinary input); ``unsupported``
    (dtype → why the backend cannot carry it); ``notes`` (e.g. traced γ
    unsupported); ``options`` (what the candidate was called with);
    ``str(report)`` a table; :meth:`to_dict` the JSON.
    """

    loss: str
    backend: str
    entries: list = field(default_factory=list)
    not_accepted: dict = field(default_factory=dict)
    grad_checked: bool = True
    profile: str = "reference"
    kind: str = "logits"  # or "linear"
    options: dict = field(default_factory=dict)
    unsupported: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    seconds: float = 0.0
    compilations: int | None = None  # JAX traces (under jax.jit: compilations)
    order: int = 1  # 2: Hessian-vector products judged too (quantity "hvp")

    @property
    def passed(self) -> bool:
        return bool(self.entries) and all(e.passed for e in self.entries)

    @property
    def failures(self) -> list:
        return [e for e in self.entries if not e.passed]

    def _title(self) -> str:
        what = f"{self.loss}{' (fused linear)' if self.kind == 'linear' else ''} on {self.backend}"
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        verdict = "PASSED" if self.passed else "FAILED"
        if not self.entries:
            verdict += " (no dtype was accepted)" if self.not_accepted else " (nothing was checked)"
        elif self.failures:
            verdict += f" ({len(self.failures)} of {len(self.entries)} entries)"
        extra = "" if self.grad_checked else " (values only: no gradient available)"
        order = ", order 2 (Hessian-vector products)" if self.order == 2 else ""
        return (f"{what}, profile {self.profile!r}{order}" + (f", {opts}" if opts else "") + f": {verdict}{extra}")

    def __str__(self) -> str:
        rows = []
        for e in self.entries:
            if e.error is not None and not e.checks:
                rows.append([e.case, e.dtype, "-", "-", "-", "-", "-", "-", e.status])
            for c in e.checks.values():
                rows.append([e.case, e.dtype, c.quantity, c.format or "-", f"{c.err:.2e}", f"{c.ulps:.3g}",
                             f"{c.abs:.2e}", c.rule, "ok" if c.passed else "FAIL"])
            if e.error is not None and e.checks:
                rows.append([e.case, e.dtype, "-", "-", "-", "-", "-", "-", e.status])
        lines = [self._title(),
                 table.render(["case", "dtype", "quantity", "result", "rel err", "ulps", "abs err", "tol", "status"],
                              rows, align="<<<<>>>><")]
        for dt, why in self.unsupported.items():
            lines.append(f"{dt}: not run: {why}")
        for dt, why in self.not_accepted.items():
            lines.append(f"{dt}: not accepted by the candidate ({why})")
        lines.extend(self.notes)
        for e in self.entries:
            if e.error is not None:
                where = f" at γ = {_gammas(e.error_gammas)}" if e.error_gammas else ""
                lines.append(f"{e.status} {e.case}/{e.dtype}{where}: {e.error}")
            for c in e.checks.values():
                if not c.passed:
                    lines.append(f"FAIL {e.case}/{e.dtype} {c.quantity} (rel err {c.err:.3g}, {c.rule}) at "
                                 f"γ = {_gammas(c.failing_gammas)}; worst: {_short(c.worst)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as JSON-ready data (what ``gammace-ref check --json`` writes)."""
        return _json({"loss": self.loss, "backend": self.backend, "kind": self.kind, "profile": self.profile,
                      "options": self.options, "passed": self.passed, "grad_checked": self.grad_checked,
                      "not_accepted": self.not_accepted, "unsupported": self.unsupported, "notes": self.notes,
                      "seconds": round(self.seconds, 3), "compilations": self.compilations, "order": self.order,
                      "entries": [e.to_dict() for e in self.entries]})


def _gammas(gs) -> str:
    return ", ".join(repr(g) for g in gs)


def _short(worst: dict) -> str:
    out = {k: v for k, v in worst.items() if k != "quantity"}
    if "gamma" in out:
        out["γ"] = out.pop("gamma")
        out = {"γ": out.pop("γ"), **out}
    for key in ("logits", "hidden"):
        row = out.get(key)
        if row is not None and len(row) > 8:
            t = out.get("target")
            extra = f", target's {row[t]:.6g}" if key == "logits" and isinstance(t, int) and 0 <= t < len(row) else ""
            out[key] = f"[{len(row)} values, max {max(row):.6g}{extra}]"
    return ", ".join(f"{k} {v}" for k, v in out.items())
