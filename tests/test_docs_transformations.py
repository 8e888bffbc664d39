"""The blocks of docs/transformations.md that tests/test_docs_examples.py skips run in a fresh interpreter.

They change process-wide settings (JAX's float64) that would leak into the other tests; the rest of
the page runs in tests/test_docs_examples.py like every page.
"""

import pathlib
import subprocess
import sys

import pytest
from test_docs_examples import python_blocks

PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "transformations.md"
FRESH = [(line, code) for line, code, skip in python_blocks(PAGE) if skip and "test_docs_transformations" in skip]


def test_the_page_has_its_fresh_blocks():
    assert len(FRESH) >= 1


@pytest.mark.parametrize("line, code", FRESH, ids=[f"line {line}" for line, _ in FRESH])
def test_block_runs_in_a_fresh_interpreter(line, code):
    for module in ("jax", "torch"):
        if f"import {module}" in code:
            pytest.importorskip(module, reason=f"{module} is not installed")
    res = subprocess.run([sys.executable, "-W", "error::DeprecationWarning:gammace_ref", "-c", code],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"docs/transformations.md:{line}\n" + res.stderr[-3000:]
