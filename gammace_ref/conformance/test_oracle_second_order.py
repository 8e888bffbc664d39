"""The oracle judges second derivatives too: ``check_implementation(..., order=2)``.

The candidate's Hessian-vector product (torch: double backward; JAX:
``jax.jvp`` of the gradient; elsewhere ``hvp=``) is compared norm-wise per
row with the mpmath closed form in every regime.  gammace_ref's own adapters
pass; a TaiLr whose double backward differentiates the weight ``W`` (the
Jacobian of the paper's gradient field, not the Hessian of the surrogate
``-stop_gradient(W)·log p``) fails, and a backward that is not differentiable
(a double backward would silently take the Hessian as 0) fails with the reason.
"""

import numpy as np
import pytest

import gammace_ref as G
from gammace_ref.testing import check_implementation, regimes

B = regimes.TAILR_THRESHOLD
ORDINARY = ("moderate", "random C=3", "random C=50")
GAMMAS = (0.0, 0.1, 0.5, 1.0)


def _hvp_checks(report):
    return {(e.case, e.dtype): e.checks["hvp"] for e in report.entries if "hvp" in e.checks}


def test_numpy_core_hvp_passes_in_every_regime():
    report = check_implementation(lambda z, y, g, b: G.tailr(z, y, g, b, reduction="none"), loss="tailr",
                                  order=2, hvp=lambda z, y, g, b, v: G.tailr_hvp(z, y, g, b, v, reduction="none"))
    assert report.passed, str(report)
    checks = _hvp_checks(report)
    assert {c for c, _ in checks} == {c.name for c in regimes.regimes("float64", 10)} | {
        "random C=3", "random C=50", "random C=1000"}
    assert all(c.rule.startswith("row ") for c in checks.values())
    assert "order 2" in str(report).splitlines()[0] and report.to_dict()["order"] == 2


def test_training_options_and_kernel_profile():
    kw = dict(reduction="mean", ignore_index=-100, label_smoothing=0.1)
    report = check_implementation(lambda z, y, g, **o: G.gamma_ce(z, y, g, **o), order=2, gammas=GAMMAS,
                                  hvp=lambda z, y, g, v, **o: G.gamma_ce_hvp(z, y, g, v, **o), **kw)
    assert report.passed, str(report)
    assert "all_ignored" in {e.case for e in report.entries}
    kernel = check_implementation(lambda z, y, g, **o: G.gamma_ce(z, y, g, **o), order=2, gammas=GAMMAS,
                                  profile="kernel", hvp=lambda z, y, g, v, **o: G.gamma_ce_hvp(z, y, g, v, **o),
                                  **kw)
    assert kernel.passed, str(kernel)


def test_a_wrong_hvp_fails_with_the_worst_row():
    def off(z, y, g, v):
        hv = G.gamma_ce_hvp(z, y, g, v, reduction="none")
        return hv * (1 + 1e-9)
    report = check_implementation(lambda z, y, g: G.gamma_ce(z, y, g, reduction="none"), order=2, hvp=off,
                                  dtypes=("float64",), gammas=(0.5,), cases=ORDINARY)
    assert not report.passed
    worst = _hvp_checks(report)["moderate", "float64"]
    assert not worst.passed and 5e-10 < worst.err < 2e-9 and worst.failing_gammas == [0.5]
    assert "row_error_norm" in worst.worst and "logits" in worst.worst


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="order must be 1 or 2, got 3"):
        check_implementation(G.gamma_ce, order=3)
    with pytest.raises(ValueError, match="needs hvp="):
        check_implementation(G.gamma_ce, order=2)
    with pytest.raises(TypeError, match="hvp must be callable"):
        check_implementation(G.gamma_ce, order=2, hvp=1.0)


class TestTorch:
    torch = pytest.importorskip("torch", reason="torch is not installed")

    @staticmethod
    def kernels():
        from gammace_ref.conformance import kernels

        return kernels

    def test_the_adapters_pass_in_every_regime(self):
        import gammace_ref.torch as GT

        for loss, fn in (("tailr", lambda z, y, g, b: GT.tailr(z, y, g, b, reduction="none", compiled=False)),
                         ("gamma_ce", lambda z, y, g: GT.gamma_ce(z, y, g, reduction="none", compiled=False))):
            report = check_implementation(fn, loss=loss, backend="torch", order=2, gammas=GAMMAS)
            assert report.passed, str(report)
            assert len(_hvp_checks(report)) == 26

    def test_a_tailr_whose_double_backward_differentiates_w_fails(self):
        K = self.kernels()
        report = check_implementation(K.paper_gradient_tailr, loss="tailr", backend="torch", order=2,
                                      cases=ORDINARY, dtypes=("float64",))
        assert not report.passed
        for e in report.entries:  # the value and gradient are right; the Hessian is not
            assert e.checks["value"].passed and e.checks["grad"].passed, str(report)
            assert not e.checks["hvp"].passed
        moderate = _hvp_checks(report)["moderate", "float64"]
        assert moderate.err > 0.1 and 0.5 in moderate.failing_gammas
        fixed = check_implementation(lambda z, y, g, b: K.paper_gradient_tailr(z, y, g, b, detach_weight=True),
                                     loss="tailr", backend="torch", order=2, cases=ORDINARY, dtypes=("float64",))
        assert fixed.passed, str(fixed)
        official = check_implementation(lambda z, y, g, b: K.official_tailr(z, y, g, b, reduction="none"),
                                        loss="tailr", backend="torch", order=2, cases=ORDINARY, dtypes=("float64",))
        assert official.passed, str(official)  # autograd of the official criterion: W under no_grad

    def test_a_backward_that_is_not_differentiable_fails_with_the_reason(self):
        K = self.kernels()
        first = check_implementation(K.careful_gamma_ce, backend="torch", cases=ORDINARY)
        assert first.passed
        report = check_implementation(K.careful_gamma_ce, backend="torch", order=2, cases=ORDINARY)
        assert not report.passed
        for e in report.entries:
            assert e.error_kind == "ERROR" and "no autograd history" in e.error, e.error


class TestJax:
    jax = pytest.importorskip("jax", reason="jax is not installed")

    def test_the_adapters_pass_in_every_regime(self):  # slow (conftest.py): eager JAX, op by op
        import gammace_ref.jax as GJ

        report = check_implementation(lambda z, y, g, b: GJ.tailr(z, y, g, b, reduction="none"), loss="tailr",
                                      backend="jax", order=2, gammas=GAMMAS)
        assert report.passed, str(report)
        assert len(_hvp_checks(report)) == 26

    def test_the_adapter_passes_on_ordinary_cases(self):
        import gammace_ref.jax as GJ

        report = check_implementation(lambda z, y, g: GJ.gamma_ce(z, y, g, reduction="none"), backend="jax",
                                      order=2, gammas=(0.0, 0.5, 1.0), cases=ORDINARY)
        assert report.passed, str(report)
        assert len(_hvp_checks(report)) == 6

    def test_a_tailr_whose_hessian_differentiates_w_fails(self):
        import jax
        import jax.numpy as jnp

        def tailr(stop):
            def f(z, y, g, b):
                log_p = jax.nn.log_softmax(z, axis=-1)
                lp = jnp.take_along_axis(log_p, y[:, None], axis=-1)[:, 0]
                w = jnp.clip(jnp.exp(lp) / (g + (1 - g) * jnp.exp(lp)), b, 1.0)
                return -(jax.lax.stop_gradient(w) if stop else w) * lp
            return f

        # the official criterion (W a stop-gradient) passes on ordinary inputs
        assert check_implementation(tailr(True), loss="tailr", backend="jax", order=2, cases=ORDINARY,
                                    dtypes=("float64",), gammas=(0.5,)).passed
        # W differentiated: its Hessian (and here its gradient too) is the wrong one
        report = check_implementation(tailr(False), loss="tailr", backend="jax", order=2, cases=ORDINARY,
                                      dtypes=("float64",), gammas=(0.5,))
        assert all(not c.passed for c in _hvp_checks(report).values())


def test_order_2_direction_is_fixed_per_case_and_rounded_to_the_dtype():
    from gammace_ref.testing import oracle

    case = oracle.battery("float32", 16, 0, None)[0]
    v = oracle.direction(case)
    assert v.dtype == np.float32 and v.shape == case.inputs["logits"].shape
    assert np.array_equal(v, oracle.direction(oracle.battery("float32", 16, 0, None)[0]))
