"""Every Python snippet of docs/transformations.md runs as written (each in a fresh interpreter)."""

import pathlib
import re
import subprocess
import sys

import pytest

PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "transformations.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)


def test_the_page_has_its_snippets():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs(index):
    code = BLOCKS[index]
    needs = {"jax": "import jax" in code, "torch": "import torch" in code}
    for module, needed in needs.items():
        if needed:
            pytest.importorskip(module, reason=f"{module} is not installed")
    # the second snippet continues the first (z, y from it)
    prefix = BLOCKS[0] if index == 1 else ""
    res = subprocess.run([sys.executable, "-W", "error::DeprecationWarning:gammace_ref", "-c", prefix + code],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
