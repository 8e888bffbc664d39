"""Training semantics through the oracle: reduction, ignore_index, label smoothing as keyword arguments.

Each bug a training kernel ships with is a check the oracle fails, naming
the quantity and the input; each correct counterpart passes.  The kernels
are in ``kernels.py``.
"""

import pytest

import gammace_ref as G
from gammace_ref.testing import assert_matches_reference, check_implementation

torch = pytest.importorskip("torch", reason="torch is not installed: the training kernels are torch kernels")

from gammace_ref.conformance import kernels as K  # noqa: E402

TRAINING = dict(backend="torch", reduction="mean", ignore_index=-100, label_smoothing=0.1)
TAILR = dict(backend="torch", loss="tailr", reduction="sum", ignore_index=-100, label_smoothing=0.1)


def _failing(report):
    return {(e.case, e.dtype, q) for e in report.entries for q, c in e.checks.items() if not c.passed}


def test_correct_training_kernel_passes_mean_with_ignored_rows_and_smoothing():
    report = assert_matches_reference(K.training_gamma_ce, dtypes=("float64", "float32", "bfloat16"), **TRAINING)
    assert report.options == {"reduction": "mean", "label_smoothing": 0.1, "ignore_index": -100}
    all_ignored = [e for e in report.entries if e.case == "all_ignored"]
    assert len(all_ignored) == 3 and all(e.checks["value"].abs == 0.0 for e in all_ignored)
    assert all(e.checks["value"].format == "float32" for e in report.entries if e.dtype == "bfloat16")


def test_correct_training_kernels_pass_sum_and_tailr():
    assert_matches_reference(K.training_gamma_ce, dtypes=("float64",), **dict(TRAINING, reduction="sum"))
    assert_matches_reference(K.training_tailr, dtypes=("float64", "float32"), **TAILR)


def test_gammace_ref_core_passes_the_training_battery_on_numpy():
    assert_matches_reference(G.gamma_ce, grad=G.gamma_ce_grad, **dict(TRAINING, backend="numpy"))


def test_must_catch_a_mean_divided_by_all_rows_including_ignored_ones():
    report = check_implementation(K.mean_over_all_rows, dtypes=("float64",), **TRAINING)
    failing = _failing(report)
    assert ("moderate", "float64", "value") in failing and ("moderate", "float64", "grad") in failing
    assert ("all_ignored", "float64", "value") not in failing  # 0/N is still 0
    worst = next(e for e in report.entries if e.case == "moderate").checks["value"].worst
    assert "-100" in worst["batch"] and worst["got"] == pytest.approx(worst["expected"] * 3 / 5, rel=1e-12)


def test_must_catch_tailr_smoothing_weighted_by_w():
    report = check_implementation(K.tailr_smoothing_weighted, dtypes=("float64",), **TAILR)
    failing = _failing(report)
    assert ("moderate", "float64", "value") in failing and ("moderate", "float64", "grad") in failing
    # At γ = 0 the weight is 1 (b = 0.2 < w): weighted or not, the same loss.
    assert 0.0 not in next(e for e in report.entries if e.case == "moderate").checks["value"].failing_gammas


def test_must_catch_smoothing_over_the_other_classes():
    report = check_implementation(K.smoothing_over_other_classes, dtypes=("float64",), **TRAINING)
    failing = _failing(report)
    assert ("random C=3", "float64", "value") in failing and ("random C=3", "float64", "grad") in failing
    assert next(e for e in report.entries if e.case == "one_class").status == "ERROR"  # ε/(C-1) at C = 1


def test_must_catch_a_float64_mean_whose_one_over_n_is_rounded_to_float32():
    options = dict(TRAINING, label_smoothing=None)
    report = check_implementation(K.mean_scale_in_float32, dtypes=("float64",), **options)
    moderate = next(e for e in report.entries if e.case == "moderate")  # 3 counted rows: 1/3 is inexact
    assert not moderate.checks["value"].passed and 1e-8 < moderate.checks["value"].err < 1e-7
    assert next(e for e in report.entries if e.case == "p_to_1").passed  # 2 counted rows: 1/2 is exact
    assert_matches_reference(K.training_gamma_ce, dtypes=("float64",), **options)
