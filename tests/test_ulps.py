"""The exact-float claims of the docs hold on every NumPy CPU path, as a bound in ulps against mpmath.

NumPy dispatches ``exp``/``log`` to kernels per CPU (baseline, AVX2,
AVX-512); their results may differ in the last bit.  README.md, docs/index.md
and docs/numerics.md promise the worked example ``[[60, 0, 0]]``, γ = 0.1
within ``ULPS`` ulps of mpmath, and the ``gammace_ref._api`` doctests print
16 significant digits; both are checked here in this process and again in a
subprocess per CPU-feature path this machine can turn off
(``NPY_DISABLE_CPU_FEATURES``).
"""

import os
import subprocess
import sys

import mpmath
import numpy as np
import pytest

import gammace_ref as G
from gammace_ref.testing import reference

ULPS = 2

CHECK = """
import doctest, mpmath, numpy as np
import gammace_ref as G, gammace_ref._api
from gammace_ref.testing import reference
from numpy._core._multiarray_umath import __cpu_features__
failed, _ = doctest.testmod(gammace_ref._api)
z = np.array([[60.0, 0.0, 0.0]])
loss, grad = G.gamma_ce_value_and_grad(z, np.array([0]), 0.1)
ref_l, ref_g = reference.row([60.0, 0.0, 0.0], 0, 0.1)
spacing = lambda r: mpmath.mpf(float(np.spacing(abs(float(r)))))
worst = max(float(abs(mpmath.mpf(float(v)) - r) / spacing(r)) for v, r in [(loss, ref_l), *zip(grad[0], ref_g)])
print(failed, worst, ",".join(k for k, v in __cpu_features__.items() if v))
"""


def _ulps(got, ref):
    return float(abs(mpmath.mpf(float(got)) - ref) / mpmath.mpf(float(np.spacing(abs(float(ref))))))


@pytest.mark.exact  # .ci/run runs it again with NumPy's SIMD dispatch off
def test_the_worked_example_is_within_the_bound_here():
    loss, grad = G.gamma_ce_value_and_grad(np.array([[60.0, 0.0, 0.0]]), np.array([0]), 0.1)
    ref_l, ref_g = reference.row([60.0, 0.0, 0.0], 0, 0.1)
    assert _ulps(loss, ref_l) <= ULPS
    assert all(_ulps(g, r) <= ULPS for g, r in zip(grad[0], ref_g))
    assert f"{float(loss):.15e}" == "1.751302152539304e-26" == f"{-float(grad[0, 0]):.15e}"


def _paths():
    """``NPY_DISABLE_CPU_FEATURES`` values, one per dispatch level this CPU has: each turns the ones above off."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    levels = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    return [""] + [" ".join(levels[i:]) for i in range(len(levels))]


@pytest.mark.parametrize("disabled", _paths(), ids=lambda v: v or "default")
def test_every_numpy_cpu_path_here_keeps_the_doctests_and_the_bound(disabled):
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=disabled)
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(G.__file__))))
    assert out.returncode == 0, out.stderr
    failed, worst, features = out.stdout.split()
    assert failed == "0", out.stdout
    assert float(worst) <= ULPS, f"{worst} ulps with {disabled or 'every feature'} ({features})"
    for level in disabled.split():
        assert level not in features.split(","), f"NPY_DISABLE_CPU_FEATURES={disabled} left {level} on"
