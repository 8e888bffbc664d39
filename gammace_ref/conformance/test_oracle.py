"""The oracle API: ``check_implementation`` accepts correct implementations and rejects wrong ones.

The worked examples in torch are in ``test_oracle_torch.py``.
"""

import numpy as np
import pytest

import gammace_ref as G
from gammace_ref.testing import assert_matches_reference, check_implementation


def test_the_reference_itself_passes_with_a_gradient_function():
    report = assert_matches_reference(
        lambda z, y, g: G.gamma_ce(z, y, g, reduction="none"), backend="numpy",
        grad=lambda z, y, g: G.gamma_ce_grad(z, y, g, reduction="none"))
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
    assert bad.case == "masked" and "non-finite logits" in bad.worst["error"]
