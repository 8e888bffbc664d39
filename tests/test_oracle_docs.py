"""docs/oracle.md's `gammace-ref check` lines run as written, with the exit status each one states
(``# exit N``).  (Its Python snippets run in tests/test_docs_examples.py, as every page's do.)
"""

import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "oracle.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def bash_blocks():
    return [body for lang, body in FENCE.findall(PAGE.read_text(encoding="utf-8")) if lang == "bash"]


def test_command_lines_exit_as_stated(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch", reason="the worked examples are torch kernels")
    from gammace_ref._cli import main

    monkeypatch.chdir(tmp_path)  # from outside the checkout: MODULE (the shipped example kernels) is installed
    ran = 0
    for block in bash_blocks():
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
