"""Regenerate the two oracle reports shown in docs/oracle.md.

    python docs/examples/torch_reports.py

Runs ``check_implementation`` on the naive and the careful torch
implementations of ``gammace_ref/conformance/test_oracle_torch.py`` and writes
the reports next to this file (tests/test_generated_docs.py checks that the
committed ones are current).
"""

import pathlib

from gammace_ref.conformance.test_oracle_torch import CarefulGammaCE, naive_gamma_ce
from gammace_ref.testing import check_implementation

HERE = pathlib.Path(__file__).resolve().parent


def reports() -> dict:
    """``{file name: report text}`` of the two implementations."""
    return {f"{name}-torch-report.txt": str(check_implementation(fn, loss="gamma_ce", backend="torch")) + "\n"
            for name, fn in (("naive", naive_gamma_ce), ("careful", CarefulGammaCE.apply))}


if __name__ == "__main__":
    for name, text in reports().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(text)
