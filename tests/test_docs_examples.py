"""The documentation's code runs as written: every fenced ``python`` block of README.md and docs/*.md,
the JavaScript worked example, the files the pages include.

Python blocks run page by page, in order, in one namespace per page (as a reader pastes them into
one session): a block may use what an earlier block of the same page defined, nothing else.  A
block that cannot run here is marked on the line just above its fence, with the reason (the
comment is invisible on the rendered page)::

    <!-- snippet: skip: needs a torch.distributed process group of several ranks -->
    ```python

A page whose block imports a backend that is not installed (torch, jax, ...) is skipped with that
reason.  A new page or block needs nothing more: it is found and run.
"""

import contextlib
import io
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NODE = shutil.which("node")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VECTORS = ROOT / "gammace_ref/conformance/vectors"
OPTIONAL = ("torch", "jax", "jaxlib", "optax", "dask", "distributed", "cupy", "sklearn", "matplotlib")

# torch.compile's own deprecation warnings (as in tests/test_torch_adapter.py): not the snippets'.
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")]

_INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.M)
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n`]*)$")
_SKIP = re.compile(r"^\s*<!--\s*snippet:\s*skip\s*:?\s*(?P<reason>.*?)\s*-->\s*$")


def expand(code: str) -> str:
    """``code`` with its include lines expanded as pymdownx.snippets does.

    ``--8<-- "path"`` is the file; ``--8<-- "path:section"`` the lines between
    its ``--8<-- [start:section]`` and ``--8<-- [end:section]`` markers.
    """
    def include(match):
        path, _, section = match.group(1).partition(":")
        lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
        if section:
            marks = [i for i, line in enumerate(lines) if f"--8<-- [start:{section}]" in line or
                     f"--8<-- [end:{section}]" in line]
            lines = lines[marks[0] + 1:marks[1]]
        return "\n".join(lines)

    return _INCLUDE.sub(include, code)


def python_blocks(path):
    """``[(line of the first code line, code, skip reason or None)]`` of the page's ``python`` fences.

    Include lines (``--8<-- "path[:section]"``) are expanded.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip().split()
        j = i + 1
        while j < len(lines) and not (lines[j].startswith(indent) and lines[j].strip() == fence):
            j += 1
        if info and info[0] in ("python", "py"):
            body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:j]]
            marker = _SKIP.match(lines[i - 1]) if i > 0 else None
            blocks.append((i + 2, expand("\n".join(body)) + "\n", marker["reason"] if marker else None))
        i = j + 1
    return blocks


def _page_id(path):
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=_page_id)
def test_every_python_block_runs_as_written(page):
    namespace = {"__name__": "__docs__"}
    ran = 0
    for line, code, skip in python_blocks(page):
        where = f"{_page_id(page)}:{line}"
        if skip is not None:
            assert len(skip) > 10, f"{where}: a skipped block needs its reason (<!-- snippet: skip: REASON -->)"
            continue
        compiled = compile("\n" * (line - 1) + code, str(page), "exec")  # tracebacks show the page's lines
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compiled, namespace)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in OPTIONAL:
                pytest.skip(f"{where}: {exc.name} is not installed")
            raise
        ran += 1
    if ran == 0:
        pytest.skip("every block of the page is marked to skip")


def test_the_block_finder_sees_nested_fences_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\na = 1\n```\n\n* item\n\n    ```python\n    b = a + 1\n    ```\n\n"
                    "<!-- snippet: skip: needs eight GPUs and a cluster -->\n```python\nc = b\n```\n"
                    "```bash\nls\n```\n", encoding="utf-8")
    assert python_blocks(page) == [(4, "a = 1\n", None), (10, "b = a + 1\n", None),
                                   (15, "c = b\n", "needs eight GPUs and a cluster")]


@pytest.mark.skipif(NODE is None, reason="node is not installed: the JavaScript worked example needs it")
def test_javascript_example_passes_the_golden_vectors_and_the_naive_one_fails():
    script = ROOT / "docs/examples/check_vectors.mjs"
    careful = subprocess.run([NODE, script, VECTORS], capture_output=True, text=True, timeout=120)
    assert careful.returncode == 0, careful.stdout + careful.stderr
    assert careful.stdout.count(" ok\n") == len(list(VECTORS.glob("*.json")))
    naive = subprocess.run([NODE, script, VECTORS, "naive"], capture_output=True, text=True, timeout=120)
    assert naive.returncode == 1 and "p_to_1 " in naive.stdout and "FAIL" in naive.stdout


def test_the_snippets_the_docs_include_exist():
    for page in (ROOT / "docs").glob("*.md"):
        for spec in re.findall(r'--8<-- "([^"]+)"', page.read_text(encoding="utf-8")):
            path, _, section = spec.partition(":")  # "file:section": the lines between its --8<-- markers
            assert (ROOT / path).is_file(), f"{page.name} includes {path}, which does not exist"
            assert not section or f"--8<-- [start:{section}]" in (ROOT / path).read_text(encoding="utf-8"), spec
