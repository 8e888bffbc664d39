"""JAX candidates through the oracle: compiled once per shape and dtype, γ traced or static.

Under ``jax.jit`` the candidate and its ``jax.vjp`` are compiled once per
(shape, dtype) with γ traced; a kernel with a Python branch on γ cannot take
a traced γ, and the report says so ("traced γ unsupported") before passing γ
statically.  The process's ``jax_enable_x64`` is left as it was.
"""

import pytest

from gammace_ref.testing import assert_matches_reference, check_implementation

jax = pytest.importorskip("jax", reason="jax is not installed")
pytest.importorskip("torch", reason="kernels.py (the candidates) is written for torch and JAX")

from gammace_ref.conformance import kernels as K  # noqa: E402

GAMMAS = (0.0, 0.1, 0.999999999, 1.0)
CASES = ("p_to_1", "p_to_0", "moderate", "masked", "random C=50")  # compilations take a second each


def test_jax_kernel_with_traced_gamma_compiles_once_per_shape_and_dtype():
    report = assert_matches_reference(K.jax_gamma_ce, backend="jax.jit", dtypes=("float32", "bfloat16"),
                                      gammas=GAMMAS, cases=CASES)
    shapes = {(e.dtype, K_shape(e.case)) for e in report.entries}
    assert report.compilations == len(shapes) and not report.notes
    assert all(e.checks["grad"].format == e.dtype for e in report.entries)


def K_shape(case):
    from gammace_ref.testing import regimes

    for regime in regimes.regimes("float32", 4096):
        if regime.name == case:
            return (len(regime.rows), len(regime.rows[0]))
    return case  # a random case: its own shape


def test_traced_gamma_unsupported_is_said_and_gamma_passed_statically():
    report = check_implementation(K.jax_branchy, backend="jax.jit", dtypes=("float32",), gammas=(0.5, 1.0),
                                  cases=("moderate", "p_to_1"))
    [note] = report.notes
    assert note.startswith("traced γ unsupported") and "TracerBoolConversionError" in note
    assert report.entries and not report.not_accepted  # it ran, with γ static: one compilation per γ
    assert report.compilations == 1 + 2 * 2  # the traced attempt, then (2 shapes) × (2 γ)
    strict = check_implementation(K.jax_branchy, backend="jax.jit", dtypes=("float32",), gammas=(0.5,),
                                  static_gamma=False, cases=("moderate",))
    assert not strict.passed and strict.not_accepted["float32"].startswith("traced γ unsupported")


def test_the_process_x64_setting_is_restored():
    before = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", False)
    try:
        check_implementation(K.jax_gamma_ce, backend="jax", dtypes=("float64",), gammas=(0.5,), cases=("moderate",))
        assert jax.config.jax_enable_x64 is False
    finally:
        jax.config.update("jax_enable_x64", before)
