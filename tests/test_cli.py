"""`gammace-ref`: help and --version on a plain install, one line naming the extra when one is missing,
every command documented (description, defaults, exit status), `vectors --out` errors in one line."""

import argparse
import os
import subprocess
import sys

import pytest

from gammace_ref import __version__, _cli
from gammace_ref.testing import vectors
from gammace_ref.testing.backends import Backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Everything beyond array-api-compat: absent on a plain `pip install gammace_ref`.
EXTRAS_MODULES = ("numpy", "mpmath", "array_api_strict", "torch", "jax", "pytest", "hypothesis", "optax",
                  "sklearn", "matplotlib", "dask", "cupy")


def _plain(*argv, cwd=None):
    """`gammace-ref ARGV` in a fresh interpreter where no extra's module can be imported."""
    code = ("import sys\n"
            f"for m in {EXTRAS_MODULES!r}:\n"
            "    sys.modules[m] = None  # `import m` raises ModuleNotFoundError, as when it is not installed\n"
            "from gammace_ref._cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def test_help_and_version_need_no_extra():
    for argv in (["--help"], *([*c.split(), "--help"] for c in _cli.EXTRA)):
        r = _plain(*argv)
        assert r.returncode == 0 and "usage: gammace-ref" in r.stdout and not r.stderr, (argv, r.stderr)
    r = _plain("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"gammace-ref {__version__}")


@pytest.mark.parametrize("command", list(_cli.EXTRA))
def test_each_command_names_its_extra_when_it_is_missing(tmp_path, command):
    argv = {"vectors": ["vectors", "--out", str(tmp_path / "v")], "check": ["check", "mod:fn"],
            "demo": ["demo", "--out", str(tmp_path / "d")],
            "demo lm": ["demo", "lm", "--out", str(tmp_path / "d")]}.get(command, [command])
    r = _plain(*argv, cwd=tmp_path)
    # the LM demo imports torch first: a backend's library, named with the backend's extra
    missing, extra = ("torch", "torch") if command == "demo lm" else ("numpy", _cli.EXTRA[command])
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"gammace-ref {command} needs {missing}, which is not installed: install the {extra} extra, "
        f'python -m pip install "gammace_ref[{extra}]"']
    assert not (tmp_path / "v").exists() and not (tmp_path / "d").exists()


def test_a_missing_backend_library_names_the_backends_extra():
    exc = ModuleNotFoundError("No module named 'torch'", name="torch")
    assert _cli._missing_extra("check", exc).endswith('python -m pip install "gammace_ref[torch]"')
    assert _cli._missing_extra("check", ModuleNotFoundError("x", name="my_module")) is None  # not ours: raised


def test_the_backend_names_are_the_backends():
    assert _cli.BACKENDS == tuple(b.value for b in Backend)


def test_every_command_has_a_description_its_defaults_and_its_exit_status():
    parser = _cli.build_parser()
    commands = _cli._subcommands(parser)  # nested ones too: "demo lm"
    assert set(commands) == set(_cli.EXTRA) == set(_cli.DESCRIPTION) >= set(_cli.EXIT_STATUS)  # check: its epilog
    for name, command in commands.items():
        text = command.format_help()
        assert command.description and len(command.description) > 40, name
        assert "exit status: 0" in text, name
        for action in command._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in (action.help or ""), (name, action.option_strings)


def test_vectors_out_onto_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert _cli.main(["vectors", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"gammace-ref vectors: cannot write {target}: exists and is not a directory\n"
    assert _cli.main(["vectors", "--out", str(target / "sub")]) == 2
    assert capsys.readouterr().err.startswith(f"gammace-ref vectors: cannot write {target / 'sub'}: ")


def _unwritable(tmp_path):
    """A directory this process cannot create files in (root ignores permissions: /sys refuses even root)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        return locked / "vectors"
    return "/sys/gammace-ref-vectors-test"


def test_vectors_out_into_an_unwritable_place_is_one_line_and_exit_2(tmp_path, capsys):
    target = _unwritable(tmp_path)
    assert _cli.main(["vectors", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gammace-ref vectors: cannot write {target}: ") and err.count("\n") == 1, err
    assert not os.path.exists(target)


def test_vectors_out_into_a_directory_that_is_not_empty_needs_force(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vectors, "generate", lambda names=None: {"p_to_1.json": vectors._dump(
        {"format": vectors.FORMAT}) + "\n"})
    (tmp_path / "stale.json").write_text(vectors._dump({"format": vectors.FORMAT}) + "\n")
    assert _cli.main(["vectors", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err and os.listdir(tmp_path) == ["stale.json"]
    assert _cli.main(["vectors", "--out", str(tmp_path), "--force"]) == 0
    assert os.listdir(tmp_path) == ["p_to_1.json"]  # the stale vector file is gone
