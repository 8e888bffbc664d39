"""The oracle API: ``check_implementation`` accepts correct implementations and rejects wrong ones.

NumPy candidates (the gradient given as a function); the worked examples in
torch are in ``test_oracle_torch.py``, training semantics in
``test_oracle_training.py``, fused linear kernels in ``test_oracle_linear.py``,
JAX in ``test_oracle_jax.py``.
"""

import json
import threading

import mpmath
import numpy as np
import pytest

import gammace_ref as G
from gammace_ref.testing import assert_matches_reference, check_implementation, reference


def per_example(z, y, g):
    return G.gamma_ce(z, y, g, reduction="none")


def per_example_grad(z, y, g):
    return G.gamma_ce_grad(z, y, g, reduction="none")


def test_the_reference_itself_passes_with_a_gradient_function():
    report = assert_matches_reference(per_example, backend="numpy", grad=per_example_grad)
    assert report.passed and report.grad_checked and not report.not_accepted
    assert {e.dtype for e in report.entries} == {"float32", "float64"}
    assert max(e.value_ulps for e in report.entries if e.dtype == "float64") <= 4


def test_a_relative_error_of_1e_7_in_float64_is_rejected():
    def off(z, y, g):
        return G.gamma_ce(z, y, g, reduction="none") * (1 + 1e-7)

    report = check_implementation(off, backend="numpy", dtypes=("float64",))
    assert not report.passed and report.grad_checked is False
    assert all(1e-8 < e.value_rel < 1e-6 for e in report.failures)
    with pytest.raises(AssertionError, match="moderate +float64"):
        assert_matches_reference(off, backend="numpy", dtypes=("float64",))


def test_tailr_candidate_and_not_accepted_dtype():
    def only_f64(z, y, g, b):
        if z.dtype != np.float64:
            raise TypeError(f"float64 only, got {z.dtype}")
        return G.tailr(z, y, g, b, reduction="none")

    report = check_implementation(only_f64, loss="tailr", backend="numpy",
                                  grad=lambda z, y, g, b: G.tailr_grad(z, y, g, b, reduction="none"))
    assert report.passed and "float32" in report.not_accepted
    assert "float64 only" in report.not_accepted["float32"]
    with pytest.raises(ValueError, match="loss must be"):
        check_implementation(only_f64, loss="focal")


def test_a_crash_on_a_hard_case_is_a_failure_not_an_exception():
    def fragile(z, y, g):
        if not np.isfinite(z).all():
            raise FloatingPointError("non-finite logits")
        return G.gamma_ce(z, y, g, reduction="none")

    report = check_implementation(fragile, backend="numpy", dtypes=("float64",))
    [bad] = report.failures
    assert bad.case == "masked" and bad.status == "ERROR" and "non-finite logits" in bad.worst["error"]
    assert "ERROR masked/float64" in str(report)


def test_a_candidate_that_refuses_every_dtype_fails():
    def refuses(z, y, g):
        raise TypeError("no")

    report = check_implementation(refuses, backend="numpy")
    assert not report.passed and set(report.not_accepted) == {"float64", "float32"}
    assert "FAILED (no dtype was accepted)" in str(report)


def test_wrong_shape_and_nan_are_fail_entries_never_exceptions():
    def column(z, y, g):
        return G.gamma_ce(z, y, g, reduction="none")[:, None]

    report = check_implementation(column, backend="numpy", dtypes=("float64",), gammas=(0.5,))
    assert not report.passed and all(e.status == "FAIL" for e in report.entries)
    assert "the loss has shape (2, 1), expected (2,)" in report.entries[0].error

    def nan_when_masked(z, y, g):
        out = G.gamma_ce(z, y, g, reduction="none")
        return np.where(np.isinf(z).any(-1), np.nan, out)

    report = check_implementation(nan_when_masked, backend="numpy", dtypes=("float64",), gammas=(0.0, 0.5),
                                  grad=per_example_grad)
    assert {e.case for e in report.failures} == {"masked"}
    check = report.failures[0].checks["value"]
    assert check.err == np.inf and np.isnan(check.worst["got"]) and check.failing_gammas == [0.0, 0.5]
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))  # strict JSON: "nan", "inf" as strings
    masked = next(e for e in data["entries"] if e["case"] == "masked")
    assert masked["checks"]["value"]["err"] == "inf" and masked["checks"]["value"]["worst"]["got"] == "nan"


def test_worst_input_per_quantity_and_every_failing_gamma():
    """The value's worst input is the value's, even where the gradient differs (by an ulp) elsewhere."""
    def wrong_at_some_gammas(z, y, g):
        out = G.gamma_ce(z, y, g, reduction="none")
        return out * (1 + 1e-9) if g in (0.1, 0.8) else out

    def grad_one_ulp_off(z, y, g):
        out = per_example_grad(z, y, g)
        return np.nextafter(out, np.inf)

    report = check_implementation(wrong_at_some_gammas, backend="numpy", dtypes=("float64",),
                                  grad=grad_one_ulp_off)
    moderate = next(e for e in report.entries if e.case == "moderate")
    value, grad = moderate.checks["value"], moderate.checks["grad"]
    assert not value.passed and value.failing_gammas == [0.1, 0.8]
    assert value.worst["quantity"] == "value" and value.worst["gamma"] in (0.1, 0.8)
    assert grad.passed and grad.worst["quantity"] == "grad" and 0 < grad.ulps <= 10
    assert moderate.worst["quantity"] == "value"  # the failing check, not the gradient's ulp
    line = next(s for s in str(report).splitlines() if s.startswith("FAIL moderate/float64 value"))
    assert "γ = 0.1, 0.8;" in line and "row" in line and "logits" in line


def test_report_columns_and_json():
    report = check_implementation(per_example, backend="numpy", grad=per_example_grad, dtypes=("float32",),
                                  gammas=(0.0, 1.0))
    header = str(report).splitlines()[1].split()
    assert header == ["case", "dtype", "quantity", "result", "rel", "err", "ulps", "abs", "err", "tol", "status"]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True and data["profile"] == "reference" and data["backend"] == "numpy"
    entry = data["entries"][0]
    assert set(entry["checks"]) == {"value", "grad"} and {"err", "ulps", "abs", "rule", "format"} <= set(
        entry["checks"]["grad"])


def test_training_options_are_passed_as_keyword_arguments():
    seen = []

    def candidate(z, y, g, *, reduction="mean", label_smoothing=0.3, **rest):  # its defaults must not apply
        seen.append((reduction, label_smoothing, dict(rest)))
        return G.gamma_ce(z, y, g, reduction=reduction, label_smoothing=label_smoothing, **rest)

    report = check_implementation(candidate, backend="numpy", dtypes=("float64",), gammas=(0.5,),
                                  reduction="none", grad=lambda z, y, g, **kw: G.gamma_ce_grad(z, y, g, **kw))
    assert report.passed and {(r, e) for r, e, _ in seen} == {("none", 0.0)} and all(rest == {} for _, _, rest in seen)
    assert report.options == {"reduction": "none", "label_smoothing": 0.0}
    seen.clear()
    report = check_implementation(candidate, backend="numpy", dtypes=("float64",), gammas=(0.5,),
                                  reduction="mean", ignore_index=-100, label_smoothing=0.1,
                                  grad=lambda z, y, g, **kw: G.gamma_ce_grad(z, y, g, **kw))
    assert report.passed and {(r, e, rest["ignore_index"]) for r, e, rest in seen} == {("mean", 0.1, -100)}
    assert [e.case for e in report.entries][-1] == "all_ignored"


def test_a_hanging_candidate_times_out():
    release = threading.Event()

    def hangs(z, y, g):
        release.wait(60)
        return per_example(z, y, g)

    try:
        report = check_implementation(hangs, backend="numpy", timeout=0.3)
    finally:
        release.set()
    assert not report.passed and report.entries[0].status == "TIMEOUT"
    assert "did not return within 0.3 s" in report.entries[0].error
    assert "not run after the timeout: float32" in report.notes


def test_concurrent_checks_leave_mpmath_global_precision_alone():
    """The reference works in a private mpmath context: mp.dps is never changed, by any thread."""
    before = mpmath.mp.dps
    mpmath.mp.dps = 20
    try:
        expected = reference.row([0.3, -1.2, 2.0], 1, 0.4)
        reports = []

        def run(seed):
            reports.append(check_implementation(per_example, backend="numpy", grad=per_example_grad,
                                                dtypes=("float64",), gammas=(0.3,), seed=seed, large_vocab=64))

        threads = [threading.Thread(target=run, args=(s,)) for s in (11, 12, 13)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            assert mpmath.mp.dps == 20  # never touched, not even while the threads run
            threads[0].join(0.01)
        assert mpmath.mp.dps == 20 and len(reports) == 3 and all(r.passed for r in reports)
        mpmath.mp.dps = 50  # the reference does not depend on the global setting
        again = reference.row([0.3, -1.2, 2.0], 1, 0.4)
        assert again[0]._mpf_ == expected[0]._mpf_ and [g._mpf_ for g in again[1]] == [g._mpf_ for g in expected[1]]
    finally:
        mpmath.mp.dps = before


@pytest.mark.parametrize("backend", ["cupy", "torch.cuda"])
def test_gpu_backends_in_low_precision(backend):
    """CuPy carries float16 (no bfloat16); torch on CUDA all four dtypes.  Skipped without a GPU."""
    from gammace_ref.testing.backends import Backend, availability

    reason = availability(Backend(backend))
    if reason:
        pytest.skip(reason)
    if backend == "cupy":
        report = assert_matches_reference(per_example, backend="cupy", grad=per_example_grad,
                                          dtypes=("float32", "float16", "bfloat16"))
        assert "bfloat16" in report.unsupported and {e.dtype for e in report.entries} == {"float32", "float16"}
    else:
        import gammace_ref.torch as gt

        assert_matches_reference(lambda z, y, g: gt.gamma_ce(z, y, g, reduction="none"), backend="torch.cuda",
                                 dtypes=("float64", "float32", "bfloat16", "float16"))
