"""``gammace-ref check``: exit status 0 / 1 / 2, one-line usage errors, --json, --timeout, --linear, bf16."""

import json
import textwrap

import pytest

from gammace_ref._cli import main

pytest.importorskip("mpmath", reason="the oracle needs the oracle extra (mpmath)")

MODULE = textwrap.dedent('''
    import threading
    import numpy as np
    import gammace_ref as G
    from gammace_ref import linear

    def good(z, y, g, **kw):
        return G.gamma_ce(z, y, g, **{"reduction": "none", **kw})

    def good_grad(z, y, g, **kw):
        return G.gamma_ce_grad(z, y, g, **{"reduction": "none", **kw})

    def good_hvp(z, y, g, v, **kw):
        return G.gamma_ce_hvp(z, y, g, v, **{"reduction": "none", **kw})

    def off(z, y, g):
        return good(z, y, g) * (1 + 1e-9)

    def refuses(z, y, g):
        raise TypeError("no, thank you")

    RELEASE = threading.Event()

    def hangs(z, y, g):
        RELEASE.wait(60)
        return good(z, y, g)

    def lin(h, w, y, g):
        return linear.gamma_ce(h, w, y, g, reduction="none")

    def lin_grad(h, w, y, g):
        out = linear.gamma_ce_value_and_grad(h, w, y, g, reduction="none")
        return out.hidden, out.weight

    not_callable = 3
''')

FAST = ["--dtypes", "float64", "--gammas", "0.0", "0.5", "--cases", "moderate", "p_to_1"]


@pytest.fixture
def mod(tmp_path, monkeypatch):
    name = f"oracle_cli_candidates_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    yield name
    import sys

    module = sys.modules.get(name)
    if module is not None:
        module.RELEASE.set()


def test_pass_is_exit_0_and_json_is_the_report(mod, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["check", f"{mod}:good", "--grad", f"{mod}:good_grad", *FAST, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gamma_ce on numpy, profile 'reference': PASSED" in text and "abs err" in text
    data = json.loads(out.read_text())
    assert data["passed"] is True and {e["case"] for e in data["entries"]} == {"moderate", "p_to_1"}
    assert main(["check", f"{mod}:good", *FAST, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["grad_checked"] is False


def test_failures_are_exit_1(mod, capsys):
    assert main(["check", f"{mod}:off", *FAST]) == 1
    assert "FAIL moderate/float64 value" in capsys.readouterr().out
    assert main(["check", f"{mod}:refuses", *FAST]) == 1  # raises on every dtype: a failure, not a pass
    out = capsys.readouterr().out
    assert "no dtype was accepted" in out and "no, thank you" in out


def test_a_hanging_candidate_is_a_timeout_and_exit_1(mod, capsys):
    assert main(["check", f"{mod}:hangs", *FAST, "--timeout", "0.3"]) == 1
    assert "TIMEOUT moderate/float64" in capsys.readouterr().out


@pytest.mark.parametrize("target, message", [
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz' (the candidate): ModuleNotFoundError"),
    ("{mod}:missing", "has no attribute 'missing'"),
    ("{mod}", "must be MODULE:FUNCTION"),
    ("{mod}:not_callable", "is a int, not callable"),
])
def test_usage_errors_are_one_line_and_exit_2(mod, capsys, target, message):
    assert main(["check", target.format(mod=mod), *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_invalid_options_are_exit_2(mod, capsys):
    assert main(["check", f"{mod}:good", "--gammas", "1.5"]) == 2
    assert "gammas must be numbers in [0, 1]" in capsys.readouterr().err
    assert main(["check", f"{mod}:good", "--cases", "nope"]) == 2
    assert main(["check", f"{mod}:good", "--bias"]) == 2


def test_second_order(mod, capsys):
    assert main(["check", f"{mod}:good", "--grad", f"{mod}:good_grad", "--order", "2", "--hvp", f"{mod}:good_hvp",
                 *FAST]) == 0
    out = capsys.readouterr().out
    assert "order 2 (Hessian-vector products): PASSED" in out and " hvp " in out
    assert main(["check", f"{mod}:good", "--order", "2", *FAST]) == 2  # NumPy has no autodiff: --hvp needed
    assert "needs hvp=" in capsys.readouterr().err
    assert main(["check", f"{mod}:lin", "--linear", "--order", "2"]) == 2


def test_linear_form(mod, capsys):
    assert main(["check", f"{mod}:lin", "--linear", "--grad", f"{mod}:lin_grad", "--dtypes", "float64",
                 "--gammas", "0.5", "--cases", "random"]) == 0
    assert "(fused linear)" in capsys.readouterr().out


def test_bfloat16_on_torch(mod, capsys):
    pytest.importorskip("torch", reason="torch is not installed")
    assert main(["check", f"{mod}:good", "--backend", "torch", "--dtypes", "bfloat16", "float16", "--gammas",
                 "0.5", "--cases", "moderate"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16" in out and "1ulp+2e-05" in out


def test_help_documents_defaults_and_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    text = capsys.readouterr().out
    assert "exit status" in text and "default: numpy" in text and "--timeout" in text and "--label-smoothing" in text
