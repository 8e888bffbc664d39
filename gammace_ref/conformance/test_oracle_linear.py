"""Fused linear + loss kernels through ``check_linear_implementation``.

gammace_ref.linear passes on every backend; a chunked torch kernel with
float32 logits passes in float64, float32 and bfloat16 (with a bias); the
same kernel with its weight gradient accumulated twice fails on ``d_weight``
alone, and the report names the class row.
"""

import numpy as np
import pytest

from gammace_ref import linear
from gammace_ref.testing import check_linear_implementation
from gammace_ref.testing.oracle_linear import LARGE_VOCAB, dd_matmul

GAMMAS = (0.0, 0.1, 0.8, 1.0)


def numpy_linear(h, w, y, g, **kw):
    return linear.gamma_ce(h, w, y, g, **{"reduction": "none", **kw})


def numpy_linear_grad(h, w, y, g, **kw):
    out = linear.gamma_ce_value_and_grad(h, w, y, g, **{"reduction": "none", **kw})
    return (out.hidden, out.weight) + (() if out.bias is None else (out.bias,))


def test_double_double_products_are_exact_to_2_to_the_minus_100():
    import mpmath

    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 300)) * 10.0 ** rng.uniform(-8, 8, (2, 300))
    b = rng.standard_normal((300, 3))
    b[:, 0] = 1.0
    a[0] -= a[0].mean()  # row 0 · column 0 cancels to almost nothing
    hi, lo = dd_matmul(a, np.zeros_like(a), b)
    with mpmath.workprec(3000):
        for i in range(2):
            for j in range(3):
                exact = mpmath.fsum(mpmath.mpf(x) * mpmath.mpf(v) for x, v in zip(a[i], b[:, j]))
                size = mpmath.fsum(abs(mpmath.mpf(x) * mpmath.mpf(v)) for x, v in zip(a[i], b[:, j]))
                assert abs(mpmath.mpf(hi[i, j]) + mpmath.mpf(lo[i, j]) - exact) <= 2.0 ** -100 * size


def test_gammace_ref_linear_passes_on_numpy_with_bias_and_training_options():
    report = assert_matches_reference_linear(numpy_linear, backend="numpy", grad=numpy_linear_grad, bias=True,
                                             gammas=GAMMAS)
    assert {q for e in report.entries for q in e.checks} == {"value", "d_hidden", "d_weight", "d_bias"}
    assert_matches_reference_linear(lambda h, w, y, g, **kw: linear.gamma_ce(h, w, y, g, **kw), backend="numpy",
                                    grad=numpy_linear_grad, dtypes=("float64",), gammas=GAMMAS, reduction="mean",
                                    ignore_index=-100, label_smoothing=0.1)


def assert_matches_reference_linear(candidate, **kwargs):
    report = check_linear_implementation(candidate, **kwargs)
    assert report.passed, str(report)
    return report


def test_gammace_ref_linear_passes_on_torch_and_jax():
    gt = pytest.importorskip("gammace_ref.torch", reason="torch is not installed")
    assert_matches_reference_linear(lambda h, w, y, g, **kw: gt.linear_gamma_ce(h, w, y, g, reduction="none", **kw),
                                    backend="torch", dtypes=("float64", "float32", "bfloat16"), gammas=GAMMAS,
                                    bias=True)
    pytest.importorskip("jax", reason="jax is not installed")
    import gammace_ref.jax as gj

    def jax_linear(h, w, y, g, **kw):
        return gj.linear_gamma_ce(h, w, y, g, reduction="none", **kw)

    report = assert_matches_reference_linear(jax_linear, backend="jax.jit", dtypes=("float32",), gammas=GAMMAS)
    assert report.compilations == 4  # one per shape: p_to_1 and p_to_0 share theirs


@pytest.mark.slow
def test_gammace_ref_linear_passes_on_eager_jax():
    pytest.importorskip("jax", reason="jax is not installed")
    import gammace_ref.jax as gj

    # Eager JAX compiles every operation for every new shape: about 4 s a call here.
    assert_matches_reference_linear(lambda h, w, y, g, **kw: gj.linear_gamma_ce(h, w, y, g, reduction="none", **kw),
                                    backend="jax", dtypes=("float64",), gammas=(0.5,))


def test_careful_fused_kernel_passes_and_a_weight_gradient_off_by_two_fails_on_d_weight_only():
    pytest.importorskip("torch", reason="torch is not installed: the fused kernels are torch kernels")
    from gammace_ref.conformance import kernels as K

    report = assert_matches_reference_linear(K.fused_linear_gamma_ce, backend="torch", bias=True,
                                             dtypes=("float64", "float32", "bfloat16"), gammas=GAMMAS)
    bf16 = [e for e in report.entries if e.dtype == "bfloat16"]
    assert all(e.checks["value"].format == "float32" and e.checks["d_weight"].format == "bfloat16" for e in bf16)

    bad = check_linear_implementation(K.fused_linear_dw_twice, backend="torch", dtypes=("float32",), gammas=GAMMAS)
    failing = {q for e in bad.entries for q, c in e.checks.items() if not c.passed}
    assert failing == {"d_weight"}
    check = bad.entries[0].checks["d_weight"]
    assert check.ratio > 100  # twice the exact row: an error the size of the row
    assert "class" in check.worst and "FAIL random/float32 d_weight" in str(bad)


def test_cancelling_weight_rows_are_judged_norm_wise():
    """d hidden cancels (near-equal weight rows): its components' relative errors are large for any float32
    kernel, yet gammace_ref.linear passes -- the rule is the error bound of a sum of products."""
    report = check_linear_implementation(numpy_linear, backend="numpy", grad=numpy_linear_grad,
                                         dtypes=("float32",), gammas=(0.5,))
    check = next(e for e in report.entries if e.case == "near_equal_rows").checks["d_hidden"]
    assert check.passed and check.ulps > 1e3  # element-wise: thousands of ulps off, as any float32 sum would be


@pytest.mark.slow
def test_large_vocabulary_of_128k_classes():
    gt = pytest.importorskip("gammace_ref.torch", reason="torch is not installed")
    report = assert_matches_reference_linear(
        lambda h, w, y, g, **kw: gt.linear_gamma_ce(h, w, y, g, reduction="none", **kw), backend="torch",
        dtypes=("float32",), gammas=(0.0, 0.5, 1.0), large=True)
    large = next(e for e in report.entries if e.case == "large_vocab")
    assert large.passed and LARGE_VOCAB == 128_257
