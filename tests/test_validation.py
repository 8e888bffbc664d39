"""Bad input: a clear error naming the argument and the value, never a silent NaN."""

import math

import numpy as np
import pytest

import gammace_ref as G

Z = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]])
Y = np.array([2, 0])


def _raises(backend, exc, match, z=Z, y=Y, *args, fn=G.gamma_ce, **kw):
    za = backend.asarray(z) if isinstance(z, np.ndarray) else z
    ya = backend.asarray(y) if isinstance(y, np.ndarray) else y
    with pytest.raises(exc, match=match):
        fn(za, ya, *(args or (0.1,)), **kw)


@pytest.mark.parametrize("gamma, match", [(-0.1, r"gamma must be in \[0, 1\], got -0\.1"),
                                          (1.5, r"gamma must be in \[0, 1\], got 1\.5"),
                                          (math.nan, r"gamma must be in \[0, 1\], got nan")])
def test_gamma_out_of_range(backend, gamma, match):
    if backend.lazy:
        pytest.skip("scalar checks run before tracing; the jit path is covered in test_api")
    _raises(backend, ValueError, match, Z, Y, gamma)


@pytest.mark.parametrize("bad", ["0.1", None, True, [0.1]])
def test_gamma_wrong_type(bad):
    with pytest.raises(TypeError, match="gamma must be a real number"):
        G.gamma_ce(Z, Y, bad)


@pytest.mark.parametrize("b", [-1e-9, 1.01, math.nan])
def test_threshold_out_of_range(b):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], got"):
        G.tailr(Z, Y, 0.1, b)
    with pytest.raises(ValueError, match="threshold"):
        G.tailr_weight(np.array([-1.0]), 0.1, b)


def test_gamma_as_non_scalar_array():
    with pytest.raises(ValueError, match=r"gamma must be a scalar or a 0-d array, got shape \(2,\)"):
        G.gamma_ce(Z, Y, np.array([0.1, 0.2]))


def test_gamma_as_concrete_0d_array_is_checked():
    assert G.gamma_ce(Z, Y, np.asarray(0.1)) == G.gamma_ce(Z, Y, 0.1)
    with pytest.raises(ValueError, match="gamma must be in"):
        G.gamma_ce(Z, Y, np.asarray(2.0))


@pytest.mark.parametrize("eps, exc", [(1.0, ValueError), (-0.1, ValueError), (math.nan, ValueError),
                                      ("0.1", TypeError)])
def test_label_smoothing_out_of_range(eps, exc):
    with pytest.raises(exc, match="label_smoothing"):
        G.gamma_ce(Z, Y, 0.1, label_smoothing=eps)


def test_float_and_bool_targets(backend):
    _raises(backend, TypeError, "targets must have an integer dtype.*float", Z, Y.astype(np.float64))
    _raises(backend, TypeError, "targets must have an integer dtype.*bool", Z, Y.astype(bool))


def test_integer_logits(backend):
    _raises(backend, TypeError, "logits must have a real floating dtype.*int", Z.astype(np.int64), Y)


@pytest.mark.parametrize("y, match", [(np.array([3, 0]), r"targets: value 3 at index \(0,\) is out of range \[0, 3\)"),
                                      (np.array([0, -1]), r"targets: value -1 at index \(1,\) is out of range")])
def test_targets_out_of_range(backend, y, match):
    if backend.lazy:
        pytest.skip("values cannot be checked under jit: NaN rows instead (test_api)")
    _raises(backend, ValueError, match, Z, y)
    _raises(backend, ValueError, match, Z, y, 0.1, 0.2, fn=G.tailr_grad)


def test_ignore_index_is_not_out_of_range(backend):
    out = G.gamma_ce(backend.asarray(Z), backend.asarray(np.array([-100, 0])), 0.1, ignore_index=-100)
    assert math.isfinite(float(backend.numpy(out)))


@pytest.mark.parametrize("row, what", [([-math.inf] * 3, "-inf"), ([0.0, math.inf, 1.0], "inf"),
                                       ([0.0, math.nan, 1.0], "nan")])
def test_counted_row_without_finite_maximum(backend, row, what):
    if backend.lazy:
        pytest.skip("values cannot be checked under jit")
    z = np.array([[0.0, 1.0, 2.0], row])
    _raises(backend, ValueError, rf"logits: the row at index \(1,\) has maximum {what}", z, np.array([0, 1]))


def test_shape_mismatch(backend):
    _raises(backend, ValueError, r"targets shape \(3,\) does not match logits shape \(2, 3\).*expected \(2,\)",
            Z, np.array([0, 1, 2]))
    _raises(backend, ValueError, r"targets shape \(2,\) does not match logits shape \(2, 3\) without class "
                                 r"axis 0: expected \(3,\)", Z, Y, axis=0)


def test_zero_dim_logits_and_empty_class_axis(backend):
    _raises(backend, ValueError, "at least one dimension", np.array(1.0), np.array(0))
    _raises(backend, ValueError, "has no classes", np.zeros((2, 0)), Y)


def test_bad_axis_reduction_ignore_index(backend):
    _raises(backend, ValueError, "axis 2 is out of range", axis=2)
    _raises(backend, TypeError, "axis must be an int, got float 1.0", axis=1.0)
    _raises(backend, ValueError, r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'", reduction="avg")
    _raises(backend, TypeError, "ignore_index must be an int or None, got float", ignore_index=1.5)


def test_not_arrays():
    with pytest.raises(TypeError, match="logits must be an array of an array-API library, got list"):
        G.gamma_ce([[0.0, 1.0]], Y[:1], 0.1)
    with pytest.raises(TypeError, match="targets must be an array"):
        G.gamma_ce(Z, [2, 0], 0.1)
    with pytest.raises(TypeError, match="logp must be an array"):
        G.gamma_ce_from_logp(-1.0, 0.1)


def test_mixed_libraries():
    torch = pytest.importorskip("torch", reason="torch not installed: cannot mix two libraries")
    with pytest.raises(TypeError, match=r"logits \(numpy.ndarray\) and targets \(torch.Tensor\) must come from "
                                        "the same array library"):
        G.gamma_ce(Z, torch.tensor(Y), 0.1)


def test_mixed_devices():
    xp = pytest.importorskip("array_api_strict", reason="array-api-strict not installed")
    z = xp.asarray(Z, device=xp.Device("device1"))
    y = xp.asarray(Y)
    with pytest.raises(ValueError, match=r"logits \(on device .*device1.*\) and targets \(on device .*CPU_DEVICE.*\) "
                                         "must be on the same device"):
        G.gamma_ce(z, y, 0.1)
    # The same arrays on one non-default device work, and stay there.
    loss, grad = G.gamma_ce_value_and_grad(z, xp.asarray(Y, device=xp.Device("device1")), 0.1)
    assert grad.device == z.device
