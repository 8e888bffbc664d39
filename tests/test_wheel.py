"""The wheel, installed in a fresh venv, works from any directory: help and version on a plain
install (and one line naming the extra a command needs), the golden vectors and the conformance
suite once the test extra's packages are there.

Nothing is downloaded: the wheel is built without build isolation (setuptools is in the test
extra), installed with ``--no-deps --no-index``, and the venv reaches this environment's packages
through a ``.pth`` line.  A directory named in a ``.pth`` file is only appended to ``sys.path``: the
``.pth`` files inside it, among them the editable install's finder of a development checkout, are
not processed, so ``gammace_ref`` comes from the wheel (the test checks it).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import gammace_ref
from gammace_ref.testing import vectors

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd, cwd, env, expect=0, timeout=600):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    print(f"$ {' '.join(map(str, cmd))}  -> exit {r.returncode}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    assert r.returncode == expect, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _build_wheel(tmp: Path, env) -> Path:
    """The wheel of this checkout's package, built from a copy of what it needs (no build/ left here)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "gammace_ref", src / "gammace_ref", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp / "dist", src], cwd=tmp, env=env)
    [wheel] = (tmp / "dist").glob("gammace_ref-*.whl")
    return wheel


def test_the_wheel_runs_the_oracle_from_a_fresh_venv(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    wheel = _build_wheel(tmp_path, env)
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in Path(str(vectors.shipped())).glob("*.json"))
    assert len(shipped) == len(vectors.regime_names())
    for name in ["gammace_ref/conformance/conformance.ini", "gammace_ref/conformance/conftest.py",
                 "gammace_ref/conformance/test_vectors.py", "gammace_ref/conformance/vectors/README.md",
                 "gammace_ref/testing/pytest_plugin.py", *(f"gammace_ref/conformance/vectors/{n}" for n in shipped)]:
        assert name in names, name
    assert all(n.startswith(("gammace_ref/", "gammace_ref-")) for n in names), names
    size = wheel.stat().st_size
    print(f"wheel: {wheel.name}, {size} bytes, {len(names)} files")
    assert size < 2_000_000

    venv, work = tmp_path / "venv", tmp_path / "work"  # work: a directory outside the checkout
    work.mkdir()
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work, env=env)
    python, cli = venv / "bin" / "python", venv / "bin" / "gammace-ref"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
         cwd=work, env=env)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=work, env=env).stdout.strip())

    # A plain install: the one dependency, array-api-compat, and nothing else.
    plain = tmp_path / "plain"
    plain.mkdir()
    os.symlink(Path(importlib.util.find_spec("array_api_compat").origin).parent, plain / "array_api_compat")
    (site / "_deps.pth").write_text(f"{plain}\n")
    _run([python, "-c", "import gammace_ref, numpy"], cwd=work, env=env, expect=1)  # numpy is really absent
    assert "usage: gammace-ref" in _run([cli, "--help"], cwd=work, env=env).stdout
    assert _run([cli, "--version"], cwd=work, env=env).stdout.strip() == f"gammace-ref {gammace_ref.__version__}"
    r = _run([cli, "vectors", "--out", work / "v"], cwd=work, env=env, expect=2)
    assert r.stderr.strip().endswith('python -m pip install "gammace_ref[oracle]"')
    r = _run([cli, "conformance"], cwd=work, env=env, expect=2)
    assert r.stderr.strip().endswith('python -m pip install "gammace_ref[test]"')

    # With the test extra's packages (this environment's site-packages, not its gammace_ref).
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_deps.pth").write_text("".join(f"{p}\n" for p in sorted(here)))
    where = _run([python, "-c", "import gammace_ref; print(gammace_ref.__file__)"], cwd=work, env=env).stdout
    assert Path(where.strip()).is_relative_to(site), where
    _run([cli, "vectors", "--out", work / "vectors"], cwd=work, env=env)
    for name in shipped:  # what the installed generator writes is what the wheel ships
        assert (work / "vectors" / name).read_bytes() == (site / "gammace_ref/conformance/vectors" / name).read_bytes()
    r = _run([cli, "conformance", "--backends", "numpy", "--json", work / "report.json", "--",
              "-k", "reproduces_vectors or reference_itself or checked_in_files"], cwd=work, env=env)
    assert "PASS" in r.stdout and (work / "report.json").is_file()
    assert not list(work.glob(".pytest_cache")) and not list(work.glob("**/__pycache__"))
