"""docs/oracle.md runs as written: its Python snippets in order, its `gammace-ref check` lines with the exit
status each one states (``# exit N``).

Includes are expanded as pymdownx.snippets expands them (``--8<-- "path"``,
``--8<-- "path:section"`` between ``# --8<-- [start:section]`` and
``# --8<-- [end:section]`` lines).  The worked examples are torch and JAX
kernels: the test needs both.
"""

import pathlib
import re
import shlex
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "oracle.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.M)


def expand(text: str) -> str:
    def include(match):
        path, _, section = match.group(1).partition(":")
        lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
        if section:
            lines = lines[lines.index(f"# --8<-- [start:{section}]") + 1:lines.index(f"# --8<-- [end:{section}]")]
        return "\n".join(lines)

    return INCLUDE.sub(include, text)


def blocks(language: str):
    return [expand(body) for lang, body in FENCE.findall(PAGE.read_text(encoding="utf-8")) if lang == language]


def test_every_include_of_the_page_resolves():
    text = PAGE.read_text(encoding="utf-8")
    for spec in INCLUDE.findall(text) + re.findall(r'^\s*--8<-- "([^"]+)"$', text, re.M):
        path, _, section = spec.partition(":")
        body = (ROOT / path).read_text(encoding="utf-8")
        assert not section or f"# --8<-- [start:{section}]" in body, spec


def test_python_snippets_run_in_order():
    pytest.importorskip("torch", reason="the worked examples are torch kernels")
    pytest.importorskip("jax", reason="the worked examples include a JAX kernel")
    namespace = {"__name__": "oracle_md"}
    for i, code in enumerate(blocks("python")):
        exec(compile(code, f"docs/oracle.md python block {i + 1}", "exec"), namespace)  # noqa: S102


def test_command_lines_exit_as_stated(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch", reason="the worked examples are torch kernels")
    from gammace_ref._cli import main

    (tmp_path / "conformance").mkdir()
    shutil.copy(ROOT / "conformance" / "kernels.py", tmp_path / "conformance" / "kernels.py")
    monkeypatch.chdir(tmp_path)
    ran = 0
    for block in blocks("bash"):
        for line in block.splitlines():
            command, _, comment = line.partition("#")
            words = shlex.split(command)
            if words[:1] == ["cd"]:
                monkeypatch.chdir(words[1])
            elif words[:2] == ["gammace-ref", "check"]:
                status = re.search(r"exit (\d)", comment)
                assert status, f"state the exit status of: {line}"
                assert main(words[1:]) == int(status.group(1)), line + "\n" + capsys.readouterr().out
                ran += 1
    assert ran >= 3
