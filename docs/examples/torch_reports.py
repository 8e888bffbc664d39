"""Regenerate the two oracle reports shown in docs/oracle.md.

    python docs/examples/torch_reports.py

Runs ``check_implementation`` on the naive and the careful torch
implementations of ``gammace_ref/conformance/test_oracle_torch.py`` and writes
the reports next to this file.
"""

import pathlib

from gammace_ref.conformance.test_oracle_torch import CarefulGammaCE, naive_gamma_ce
from gammace_ref.testing import check_implementation

here = pathlib.Path(__file__).resolve().parent

for name, fn in (("naive", naive_gamma_ce), ("careful", CarefulGammaCE.apply)):
    report = check_implementation(fn, loss="gamma_ce", backend="torch")
    (here / f"{name}-torch-report.txt").write_text(str(report) + "\n", encoding="utf-8")
    print(report, end="\n\n")
