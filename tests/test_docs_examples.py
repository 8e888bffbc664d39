"""The worked examples of the documentation run and say what the pages say."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed: the JavaScript worked example needs it")
def test_javascript_example_passes_the_golden_vectors_and_the_naive_one_fails():
    script, vectors = ROOT / "docs/examples/check_vectors.mjs", ROOT / "conformance/vectors"
    careful = subprocess.run([NODE, script, vectors], capture_output=True, text=True, timeout=120)
    assert careful.returncode == 0, careful.stdout + careful.stderr
    assert careful.stdout.count(" ok\n") == len(list(vectors.glob("*.json")))
    naive = subprocess.run([NODE, script, vectors, "naive"], capture_output=True, text=True, timeout=120)
    assert naive.returncode == 1 and "p_to_1 " in naive.stdout and "FAIL" in naive.stdout


def test_the_snippets_the_docs_include_exist():
    import re

    for page in (ROOT / "docs").glob("*.md"):
        for spec in re.findall(r'--8<-- "([^"]+)"', page.read_text(encoding="utf-8")):
            path, _, section = spec.partition(":")  # "file:section": the lines between its --8<-- markers
            assert (ROOT / path).is_file(), f"{page.name} includes {path}, which does not exist"
            assert not section or f"--8<-- [start:{section}]" in (ROOT / path).read_text(encoding="utf-8"), spec
