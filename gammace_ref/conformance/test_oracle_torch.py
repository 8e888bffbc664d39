"""Worked examples of the oracle on torch implementations (the kernels are in ``kernels.py``).

The textbook formula (softmax, then the loss) is rejected: it loses
everything where ``1 - p`` is below machine epsilon and overflows at p -> 0.
The careful one (log-space, ``1 - p`` summed from the other classes, analytic
gradient) is accepted -- in float64 and float32, and for bfloat16/float16
input, where it computes in float32 and returns a float32 loss and a gradient
in the input's dtype.  The same formulas computed in bfloat16 fail, and the
report says where.  ``profile="kernel"`` accepts a careful value with the
usual ``w·(softmax - onehot)`` backward, and still rejects the naive value
at p -> 1, NaN on masked rows, and a wrong gradient at γ = 1.
"""

import pytest

from gammace_ref.testing import assert_matches_reference, check_implementation

torch = pytest.importorskip("torch", reason="torch is not installed: the torch worked examples need it")

from gammace_ref.conformance import kernels as K  # noqa: E402


def _failing(report):
    return {(e.case, e.dtype, q) for e in report.entries for q, c in e.checks.items() if not c.passed}


def test_worked_example_naive_torch_is_rejected_near_p_to_1():
    report = check_implementation(K.naive_gamma_ce, backend="torch")
    assert not report.passed and report.grad_checked
    failed = {e.case for e in report.failures}
    assert {"p_to_1", "p_to_0", "huge_logits"} <= failed
    p1 = next(e for e in report.failures if e.case == "p_to_1" and e.dtype == "float64")
    assert p1.value_rel == 1.0 and p1.worst["got"] == 0.0  # 1 - p below eps: the loss is lost entirely
    assert p1.checks["value"].failing_gammas == list(report_gammas())  # every γ listed


def report_gammas():
    from gammace_ref.testing import regimes

    return regimes.GAMMAS


def test_worked_example_careful_torch_is_accepted():
    report = assert_matches_reference(K.careful_gamma_ce, backend="torch")
    assert report.grad_checked and len(report.entries) == 26


def test_careful_bf16_kernel_passes_bf16_and_fp16_with_float32_loss_and_16_bit_gradient():
    report = assert_matches_reference(K.careful_gamma_ce, backend="torch", dtypes=("bfloat16", "float16"))
    assert {e.dtype for e in report.entries} == {"bfloat16", "float16"}
    for e in report.entries:
        assert e.checks["value"].format == "float32" and e.checks["grad"].format == e.dtype
        # Correctly rounded: at most half an ulp of the gradient's format (the rule allows 1).
        assert e.checks["grad"].ulps <= 0.5 + 1e-3


def test_bf16_compute_fails_and_the_report_says_where():
    report = check_implementation(K.sloppy_bf16, backend="torch", dtypes=("bfloat16",))
    assert not report.passed
    failing = _failing(report)
    assert ("p_to_1", "bfloat16", "value") in failing and ("random C=1000", "bfloat16", "grad") in failing
    p1 = next(e for e in report.entries if e.case == "p_to_1").checks["value"]
    assert p1.format == "bfloat16" and p1.ulps > 4 and p1.worst["row"] == 1 and p1.worst["target"] == 0
    text = str(report)
    assert "FAIL p_to_1/bfloat16 value" in text and "logits [25.0, 0.5, -3.0, 1.0, 0.0]" in text


def test_numpy_has_no_bfloat16_and_says_so():
    import gammace_ref as G

    report = check_implementation(lambda z, y, g: G.gamma_ce(z, y, g, reduction="none"), backend="numpy",
                                  dtypes=("bfloat16", "float16"), gammas=(0.0, 0.5),
                                  grad=lambda z, y, g: G.gamma_ce_grad(z, y, g, reduction="none"))
    assert report.passed and "NumPy has no bfloat16" in report.unsupported["bfloat16"]
    assert {e.dtype for e in report.entries} == {"float16"}


def test_kernel_profile_accepts_a_onehot_backward_that_the_reference_profile_rejects():
    strict = check_implementation(K.onehot_backward, backend="torch")
    assert {q for _, _, q in _failing(strict)} == {"grad"}  # values all exact: only p_y - 1 components
    assert {c for c, _, _ in _failing(strict)} <= {"p_to_1", "p_to_1_extreme", "two_classes", "huge_vocab"}
    assert_matches_reference(K.onehot_backward, backend="torch", profile="kernel")


def test_kernel_profile_still_rejects_wrong_values_masked_rows_and_gamma_one():
    naive = check_implementation(K.naive_gamma_ce, backend="torch", profile="kernel")
    failing = _failing(naive)
    assert ("p_to_1", "float64", "value") in failing  # the p -> 1 value
    assert ("masked", "float64", "grad") in failing  # NaN on a masked row
    wrong = check_implementation(K.gamma_one_weightless, backend="torch", profile="kernel")
    assert not wrong.passed
    assert all(c.failing_gammas == [1.0] for e in wrong.failures for c in e.checks.values() if not c.passed)


def test_torch_and_jax_adapters_pass_as_candidates():
    import gammace_ref.torch as gt

    assert_matches_reference(lambda z, y, g: gt.gamma_ce(z, y, g, reduction="none", compiled=False),
                             backend="torch", dtypes=("float64", "float32", "bfloat16", "float16"))
    assert_matches_reference(lambda z, y, g, b: gt.tailr(z, y, g, b, reduction="none", compiled=False),
                             loss="tailr", backend="torch")
    pytest.importorskip("jax", reason="jax is not installed")
    import gammace_ref.jax as gj

    assert_matches_reference(lambda z, y, g: gj.gamma_ce(z, y, g, reduction="none"), backend="jax.jit",
                             dtypes=("float64", "bfloat16"), cases=("p_to_1", "p_to_0", "masked", "huge_vocab"))
