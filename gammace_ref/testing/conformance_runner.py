"""The runner of ``gammace-ref conformance``: the conformance suite under pytest, summarised.

``gammace-ref conformance`` calls :func:`run`: pytest runs the suite shipped
in the package (:mod:`gammace_ref.conformance`, found with
:mod:`importlib.resources`, so it runs from an installed wheel in any
directory) with the suite's own settings (``conformance.ini``: warnings are
errors; the progress line is the progress), a small plugin records every test's outcome,
its backend(s) (the ``backend`` / ``pair`` parameter) and the worst error it
reported (``record_property("worst_rel_err", ...)``), and the result is a
table with one row per backend and one column per check (the test module),
each cell the worst error and the status.  The JSON report holds no timings,
so two runs of the same code diff clean.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

from . import table
from .backends import Backend, skip_reason

ANY = "(any)"  # checks that take no backend: generator, oracle on NumPy, ...


class _Collector:
    def __init__(self):
        self.cells = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0, "worst_rel_err": None})
        self.failures = []

    def pytest_runtest_logreport(self, report):
        if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
            return
        check = Path(report.location[0]).stem.removeprefix("test_")
        worst = dict(report.user_properties).get("worst_rel_err")
        for b in self._backends.get(report.nodeid, [ANY]):
            cell = self.cells[(b, check)]
            cell[report.outcome] += 1
            if worst is not None:
                cell["worst_rel_err"] = max(worst, cell["worst_rel_err"] or 0.0)
        if report.outcome == "failed":
            self.failures.append(report.nodeid)

    def pytest_collection_modifyitems(self, items):
        self._backends = {}
        for item in items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            kinds = [params["backend"]] if "backend" in params else list(params.get("pair", ()))
            self._backends[item.nodeid] = [k.value for k in kinds if isinstance(k, Backend)] or [ANY]


def find_suite(path=None) -> Path:
    """The suite's directory: ``path`` (a copy of the suite), else the one shipped in the package."""
    if path is None:
        suite = importlib.resources.files("gammace_ref.conformance")
        if not isinstance(suite, Path):  # a zip import: pytest needs files on disk
            raise SystemExit("gammace-ref conformance: the package is not installed as files "
                             f"({suite!r}); install it from a wheel or a checkout")
        return suite
    suite = Path(path)
    if not (suite / "test_vectors.py").is_file():
        raise SystemExit(f"gammace-ref conformance: {suite} is not a copy of the conformance suite "
                         "(no test_vectors.py in it)")
    return suite.resolve()


def run(backends=None, dtypes=None, suite=None, json_path=None, pytest_args=()) -> int:
    """Run the suite (``GAMMACE_BACKENDS`` / ``GAMMACE_DTYPES`` from ``backends`` / ``dtypes``),
    print the backend × check table, write the JSON report; returns pytest's exit status."""
    import pytest

    suite = find_suite(suite)
    if backends:
        os.environ["GAMMACE_BACKENDS"] = ",".join(backends)
    if dtypes:
        os.environ["GAMMACE_DTYPES"] = ",".join(dtypes)
    ini = Path(importlib.resources.files("gammace_ref.conformance") / "conformance.ini")
    collector = _Collector()
    code = pytest.main([str(suite), "-c", str(ini), "--rootdir", str(suite), "-q", "-p", "no:cacheprovider",
                        "--no-header", "-rN", *pytest_args], plugins=[collector])
    status = {k.value: skip_reason(k) for k in Backend}
    print(_table(collector, status))
    if json_path:
        report = {"passed": code == 0, "exit_code": int(code), "backends": {
            k: {"run": reason is None, "reason": reason} for k, reason in status.items()},
            "checks": {f"{b}/{c}": cell for (b, c), cell in sorted(collector.cells.items())},
            "failures": sorted(collector.failures)}
        Path(json_path).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return int(code)


def _table(collector, status) -> str:
    checks = sorted({c for _, c in collector.cells})
    rows = []
    for b in [k.value for k in Backend if status[k.value] is None] + [ANY]:
        cells = []
        for c in checks:
            cell = collector.cells.get((b, c))
            if cell is None or cell["passed"] + cell["failed"] == 0:
                cells.append("-")
                continue
            worst = "" if cell["worst_rel_err"] is None else f"{cell['worst_rel_err']:.1e} "
            n = cell["passed"] + cell["failed"]
            cells.append(f"{worst}{'ok' if not cell['failed'] else 'FAIL'} {cell['passed']}/{n}")
        rows.append([b, *cells])
    out = ["", table.render(["backend", *checks], rows),
           "cells: worst relative error reported by the check (where it reports one), status, tests passed / run"]
    for k, reason in status.items():
        if reason:
            out.append(f"not run: {k}: {reason}")
    if collector.failures:
        out.append("failed: " + ", ".join(collector.failures))
    out.append("PASS" if not collector.failures else "FAIL")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(run())
