"""Every generated file the documentation shows is what its generator writes today.

=========================================  ================================================  ==============
file                                       generator                                         compared
=========================================  ================================================  ==============
docs/accuracy-table.md                     ``gammace-ref accuracy --markdown FILE``          cells, ≤ 16 ulps
docs/examples/check-vectors-output.txt     ``node docs/examples/check_vectors.mjs ...``      exactly
docs/examples/*-report.txt, *-failures.txt ``python docs/examples/oracle_reports.py``  words; errors ≤ 4×
=========================================  ================================================  ==============

Regenerate every one of them (or those named) with::

    python tests/test_generated_docs.py [FILE ...]

Measured errors may differ in their last bits from one machine to another (NumPy picks its SIMD
kernels per CPU; summation orders differ): a cell of an error table agrees with the regenerated one
when both are equal, or both are zero or at least eps/4 of their dtype and differ by at most 16·eps
(16 ulps of the result they measure).  Anything else — another row, column or verdict, a number off
by more, or a value no rounding difference can produce (8.4e-267 for a 0) — is a stale file.  A
new generated file gets an entry in GENERATED below.
"""

import contextlib
import io
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE = shutil.which("node")
EPS = {"float32": 2.0 ** -23, "float64": 2.0 ** -52}
ULPS = 16
REGENERATE = "regenerate it: python tests/test_generated_docs.py {path}"


def close(a: float, b: float, dtype: str) -> bool:
    """Two measured relative errors of ``dtype`` agree up to rounding differences (see the module doc)."""
    if a == b or (math.isinf(a) and math.isinf(b)):
        return True
    eps = EPS[dtype]
    plausible = all(x == 0 or x >= eps / 4 for x in (a, b))
    return plausible and abs(a - b) <= ULPS * eps


# --------------------------------------------------------------------------- accuracy table


def _tables(text: str):
    """``(skeleton, {(dtype, row, column): cell})`` of the accuracy table's Markdown."""
    cells, skeleton, dtype, header = {}, [], None, None
    for line in text.splitlines():
        heading = re.match(r"\*\*(float32|float64)\*\*", line)
        if heading:
            dtype, header = heading.group(1), None
        if line.startswith("| ") and dtype:
            parts = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = parts
            else:
                for column, cell in zip(header[1:], parts[1:]):
                    cells[(dtype, parts[0], column)] = cell
                line = f"| {parts[0]} |"
        skeleton.append(line if not line.startswith("| regime") else "| regime / loss |")
    return skeleton, cells


def accuracy_differences(committed: str, fresh: str, columns=None) -> list:
    """What differs between two accuracy tables (only ``columns`` if given)."""
    sk_a, a = _tables(committed)
    sk_b, b = _tables(fresh)
    out = [f"line {i + 1}: {x!r} is now {y!r}" for i, (x, y) in enumerate(zip(sk_a, sk_b)) if x != y]
    if len(sk_a) != len(sk_b):
        out.append(f"{len(sk_a)} lines, now {len(sk_b)}")
    keys = {k for k in a.keys() | b.keys() if columns is None or k[2] in columns}
    for key in sorted(keys):
        x, y = a.get(key), b.get(key)
        if x is None or y is None:
            out.append(f"{key}: {'absent' if x is None else x} is now {'absent' if y is None else y}")
            continue
        (vx, *fx), (vy, *fy) = x.split(" ", 1), y.split(" ", 1)
        if fx != fy or not close(float(vx), float(vy), key[0]):
            out.append(f"{key}: {x} is now {y}")
    return out


def generate_accuracy(backends) -> str:
    from gammace_ref import _cli

    with _tmp_file() as path, contextlib.redirect_stdout(io.StringIO()):
        code = _cli.main(["accuracy", "--quiet", "--markdown", str(path), "--backends", *backends])
        text = path.read_text(encoding="utf-8")
    assert code == 0, "gammace-ref accuracy: an entry is beyond its tolerance"
    return text


@contextlib.contextmanager
def _tmp_file():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "out.md"


# --------------------------------------------------------------------------- oracle reports


NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|inf|nan)")


def report_differences(committed: str, fresh: str) -> list:
    """What differs between two oracle reports: every word and verdict exactly, the numbers loosely.

    Which input is worst, and the last bits of an error, may change with the
    CPU's summation order: an error (relative, absolute or in ulps) may move
    by a factor of 4, or within 16 when it counts ulps; a 0 stays a 0 up to
    16 ulps of the float64 relative error.
    """
    out = []
    a, b = committed.splitlines(), fresh.splitlines()
    if len(a) != len(b):
        return [f"{len(a)} lines, now {len(b)}"]
    for x, y in zip(a, b):
        if NUMBER.sub("#", x) != NUMBER.sub("#", y):
            if not (x.startswith("FAIL") and "worst:" in x and x.split("worst:")[0] == y.split("worst:")[0]):
                out.append(f"{x!r} is now {y!r}")
            continue
        for s, t in zip(NUMBER.findall(x), NUMBER.findall(y)):
            p, q = float(s), float(t)
            counts = s.isdigit() and t.isdigit()  # a count of ulps
            if p == q or (math.isnan(p) and math.isnan(q)) or (counts and abs(p - q) <= 16) or \
                    (p * q > 0 and max(abs(p), abs(q)) <= 4 * min(abs(p), abs(q))) or max(abs(p), abs(q)) < 4e-15:
                continue
            out.append(f"{x!r} is now {y!r}")
            break
    return out


def generate_reports() -> dict:
    sys.path.insert(0, str(ROOT / "docs/examples"))
    try:
        import oracle_reports
    finally:
        sys.path.pop(0)
    return {name: text + "\n" for name, text in oracle_reports.reports().items()}


# --------------------------------------------------------------------------- JavaScript example


def generate_javascript_output() -> str:
    vectors = "gammace_ref/conformance/vectors"
    out = []
    for extra in ([], ["naive"]):
        cmd = ["node", "docs/examples/check_vectors.mjs", vectors, *extra]
        r = subprocess.run([NODE, *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
        out.append(f"$ {' '.join(cmd)}\n{r.stdout}")
    return "\n".join(out)


# --------------------------------------------------------------------------- the tests

ACCURACY = ROOT / "docs/accuracy-table.md"
JS_OUTPUT = ROOT / "docs/examples/check-vectors-output.txt"
REPORTS = tuple(f"docs/examples/{name}" for name in (
    "naive-torch-report.txt", "careful-torch-report.txt", "careful-bf16-report.txt", "sloppy-bf16-failures.txt",
    "training-bug-failures.txt", "fused-linear-dw-failures.txt"))


@pytest.mark.slow
def test_the_accuracy_table_is_current():
    from gammace_ref.testing.backends import Backend, availability

    committed = ACCURACY.read_text(encoding="utf-8")
    _, cells = _tables(committed)
    columns = sorted({c for _, _, c in cells}, key=[b.value for b in Backend].index)
    here = [c for c in columns if availability(Backend(c)) is None]
    assert here, f"none of the table's backends ({columns}) is installed here"
    problems = accuracy_differences(committed, generate_accuracy(here), columns=set(here))
    assert not problems, f"docs/accuracy-table.md is stale ({REGENERATE.format(path=ACCURACY.name)}):\n" + \
        "\n".join(problems[:40])


@pytest.mark.skipif(NODE is None, reason="node is not installed: the JavaScript worked example needs it")
def test_the_javascript_example_output_is_current():
    fresh, committed = generate_javascript_output(), JS_OUTPUT.read_text(encoding="utf-8")
    assert committed == fresh, f"{JS_OUTPUT.relative_to(ROOT)} is stale: " + \
        REGENERATE.format(path=JS_OUTPUT.relative_to(ROOT))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")
def test_the_oracle_reports_are_current():
    pytest.importorskip("torch", reason="torch is not installed: the worked examples are torch code")
    fresh = generate_reports()
    for path in REPORTS:
        problems = report_differences((ROOT / path).read_text(encoding="utf-8"), fresh[Path(path).name])
        assert not problems, f"{path} is stale ({REGENERATE.format(path=path)}):\n" + "\n".join(problems[:40])


def test_the_comparison_tolerates_last_bits_and_nothing_more():
    old = ("**float32** (tolerance 2e-05)\n\n| regime / loss | numpy |\n|---|---:|\n"
           "| p_to_1/gamma_ce | 7.6e-08 |\n| p_to_1_extreme/gamma_ce | {} |\n| ties/gamma_ce | {} |\n")
    assert accuracy_differences(old.format("0.0e+00", "1.5e-07"), old.format("0.0e+00", "2.1e-07")) == []
    assert accuracy_differences(old.format("8.4e-267", "1.5e-07"), old.format("0.0e+00", "1.5e-07")) == [
        "('float32', 'p_to_1_extreme/gamma_ce', 'numpy'): 8.4e-267 is now 0.0e+00"]
    assert accuracy_differences(old.format("0.0e+00", "1.5e-07"), old.format("0.0e+00", "2.5e-05 **FAIL**"))
    assert close(4.1e-15, 4.2e-15, "float64") and not close(4.1e-15, 1.9e-14, "float64")
    assert close(0.0, 1.1e-16, "float64") and not close(0.0, 1e-300, "float64")


def _regenerate(names):
    targets = {ACCURACY.relative_to(ROOT).as_posix(), JS_OUTPUT.relative_to(ROOT).as_posix(), *REPORTS}
    for name in names or sorted(targets):
        if name not in targets:
            sys.exit(f"not a generated file: {name} (one of {', '.join(sorted(targets))})")
    if not names or ACCURACY.relative_to(ROOT).as_posix() in names:
        from gammace_ref._cli import main

        main(["accuracy", "--quiet", "--markdown", str(ACCURACY)])
    if not names or JS_OUTPUT.relative_to(ROOT).as_posix() in names:
        JS_OUTPUT.write_text(generate_javascript_output(), encoding="utf-8")
    if not names or set(REPORTS) & set(names):
        for name, text in generate_reports().items():
            (ROOT / "docs/examples" / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    _regenerate(sys.argv[1:])
