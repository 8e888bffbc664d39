"""Regenerate the two oracle reports shown in docs/oracle.md.

    python docs/examples/torch_reports.py

Runs ``check_implementation`` on the naive and the careful torch
implementations of ``conformance/test_oracle_torch.py`` and writes the
reports next to this file.
"""

import pathlib
import sys

here = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent.parent / "conformance"))

from test_oracle_torch import CarefulGammaCE, naive_gamma_ce  # noqa: E402

from gammace_ref.testing import check_implementation  # noqa: E402

for name, fn in (("naive", naive_gamma_ce), ("careful", CarefulGammaCE.apply)):
    report = check_implementation(fn, loss="gamma_ce", backend="torch")
    (here / f"{name}-torch-report.txt").write_text(str(report) + "\n", encoding="utf-8")
    print(report, end="\n\n")
