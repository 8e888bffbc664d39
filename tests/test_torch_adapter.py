"""gammace_ref.torch: autograd, torch.compile, torch.func, the nn.Module losses, errors.

Every value and gradient is checked against the NumPy core.  (That
``import gammace_ref`` loads no torch is tests/test_api.py's
``test_import_loads_no_array_library``.)
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: the PyTorch adapter cannot be tested")

import gammace_ref as G  # noqa: E402
from gammace_ref import torch as GT  # noqa: E402
from gammace_ref.torch import _kernel  # noqa: E402

# torch's own warnings while it compiles (pyproject.toml makes warnings errors).
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")]

RNG = np.random.default_rng(7)
Z = RNG.normal(0.0, 2.0, size=(6, 5))
Y = np.array([0, 4, 2, 2, 1, 3])
Y_IGN = np.array([0, -100, 2, 2, -100, 3])
# The compiled cases share one layout and option set, so the kernel compiles
# once per dtype / reduction (each compilation costs seconds).
Z3 = RNG.normal(0.0, 3.0, size=(4, 5, 3))  # (N, C, d1): class axis 1
Y3 = RNG.integers(0, 5, size=(4, 3))
Y3[0, 1] = -100
KW = dict(axis=1, reduction="mean", ignore_index=-100, label_smoothing=0.1)
# float32: NumPy and torch round differently (both within the core's 2e-5 of mpmath); an
# off-target component with label smoothing cancels down to ~eps·ε/C absolutely.
TOL = {"float32": dict(rtol=1e-5, atol=1e-8), "float64": dict(rtol=1e-13, atol=1e-300)}


def _vg(fn, z, y, *args, dtype="float64", upstream=None, **kw):
    """Loss and ``.grad`` from ``backward(upstream)`` of ``fn`` on float64 NumPy ``z``."""
    zt = torch.tensor(z, dtype=getattr(torch, dtype), requires_grad=True)
    loss = fn(zt, torch.as_tensor(y), *args, **kw)
    loss.backward(upstream)
    return loss.detach().numpy(), zt.grad.numpy()


def _core(which, z, y, *args, dtype="float64", **kw):
    kw.pop("compiled", None)
    return getattr(G, f"{which}_value_and_grad")(z.astype(dtype), y, *args, **kw)


# --- autograd ----------------------------------------------------------------


@pytest.mark.parametrize("smooth_ignore", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("gamma", [0.0, 1e-7, 0.5, 1.0])
def test_gradcheck_gamma_ce(gamma, reduction, smooth_ignore):
    kw = dict(ignore_index=-100, label_smoothing=0.1) if smooth_ignore else {}
    y = torch.tensor(Y_IGN if smooth_ignore else Y)
    f = lambda z: GT.gamma_ce(z, y, gamma, reduction=reduction, compiled=False, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(f, (torch.tensor(Z, requires_grad=True),))


def test_gradcheck_compiled():
    f = lambda z: GT.gamma_ce(z, torch.tensor(Y3), 0.3, **KW)  # noqa: E731
    assert torch.autograd.gradcheck(f, (torch.tensor(Z3, requires_grad=True),))
    assert not _kernel._compile_error


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("which", ["gamma_ce", "tailr"])
def test_eager_value_and_grad_match_core(which, reduction, dtype):
    # Class axis 1, ignored targets, label smoothing, a non-unit upstream gradient.
    args = (0.3, 0.2) if which == "tailr" else (0.3,)
    kw = dict(KW, reduction=reduction, compiled=False)
    v = RNG.normal(size=Y3.shape).astype(dtype) if reduction == "none" else np.array(2.5, dtype=dtype)
    loss, grad = _vg(getattr(GT, which), Z3, Y3, *args, dtype=dtype, upstream=torch.tensor(v), **kw)
    ref_l, ref_g = _core(which, Z3, Y3, *args, dtype=dtype, **kw)
    assert loss.dtype == grad.dtype == np.dtype(dtype) and loss.shape == np.shape(ref_l)
    np.testing.assert_allclose(loss, ref_l, **TOL[dtype])
    np.testing.assert_allclose(grad, ref_g * (v[:, None] if v.ndim else v), **TOL[dtype])


@pytest.mark.parametrize(("dtype", "reduction"), [("float64", "mean"), ("float32", "none")])
def test_compiled_value_and_grad_match_core(dtype, reduction):
    kw = dict(KW, reduction=reduction)
    v = RNG.normal(size=Y3.shape).astype(dtype) if reduction == "none" else np.array(2.5, dtype=dtype)
    loss, grad = _vg(GT.gamma_ce, Z3, Y3, 0.3, dtype=dtype, upstream=torch.tensor(v), **kw)
    ref_l, ref_g = _core("gamma_ce", Z3, Y3, 0.3, dtype=dtype, **kw)
    np.testing.assert_allclose(loss, ref_l, **TOL[dtype])
    np.testing.assert_allclose(grad, ref_g * (v[:, None] if v.ndim else v), **TOL[dtype])
    assert not _kernel._compile_error


def test_compiled_kernel_is_shape_dynamic():
    from torch._dynamo.utils import counters

    GT.gamma_ce(torch.tensor(Z3, requires_grad=True), torch.tensor(Y3), 0.3, **KW).backward()
    graphs = counters["stats"]["unique_graphs"]
    for shape in ((7, 5, 2), (3, 9, 4)):
        z = torch.tensor(RNG.normal(size=shape), requires_grad=True)
        y = torch.tensor(RNG.integers(0, shape[1], size=(shape[0], shape[2])))
        loss = GT.gamma_ce(z, y, 0.6, **KW)  # γ is traced: a new value compiles nothing either
        loss.backward()
        ref_l, ref_g = _core("gamma_ce", z.detach().numpy(), y.numpy(), 0.6, **KW)
        assert float(loss.detach()) == pytest.approx(ref_l, rel=1e-13)
        np.testing.assert_allclose(z.grad.numpy(), ref_g, rtol=1e-13, atol=1e-300)
    assert counters["stats"]["unique_graphs"] == graphs


def test_failed_compilation_falls_back_to_eager_once(monkeypatch):
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no compiler")

    monkeypatch.setattr(_kernel, "_compiled_kernel", lambda: broken)
    monkeypatch.setattr(_kernel, "_compile_error", [])
    with pytest.warns(RuntimeWarning, match="no compiler"):
        loss = GT.gamma_ce(torch.tensor(Z), torch.tensor(Y), 0.3)
    assert float(loss) == pytest.approx(G.gamma_ce(Z, Y, 0.3), rel=1e-14)
    GT.gamma_ce(torch.tensor(Z), torch.tensor(Y), 0.3)  # warns no more (warnings are errors), tries no more
    assert len(calls) == 1


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 1.0])
def test_tailr_with_zero_threshold_has_the_gamma_ce_gradient(gamma):
    kw = dict(ignore_index=-100, label_smoothing=0.1, compiled=False)
    g1 = _vg(GT.gamma_ce, Z, Y_IGN, gamma, **kw)[1]
    g2 = _vg(GT.tailr, Z, Y_IGN, gamma, 0.0, **kw)[1]
    np.testing.assert_allclose(g2, g1, rtol=4e-16, atol=0)


def test_inside_vmap_levels_the_compiled_default_runs_eagerly_without_turning_compilation_off():
    # torch.func.hessian / jacfwd call the loss on unbatched logits inside a vmap level, where Dynamo refuses
    # to compile: those calls run the core eagerly (no RuntimeWarning, compilation stays on for the rest)
    z = torch.tensor([[0.3, -1.2, 2.0, 0.7]], dtype=torch.float64)
    f = lambda z: GT.gamma_ce(z, torch.tensor([1]), 0.3, reduction="sum")  # noqa: E731 -- compiled=True
    H = torch.func.hessian(f)(z)
    J = torch.func.jacfwd(f)(z)
    per_target = torch.func.vmap(lambda y: GT.gamma_ce(z, y, 0.3, reduction="sum"))(torch.tensor([[1], [2]]))
    np.testing.assert_allclose(J.numpy(), G.gamma_ce_grad(z.numpy(), np.array([1]), 0.3, reduction="sum"),
                               rtol=1e-15)
    np.testing.assert_allclose(H.reshape(4, 4).numpy() @ np.ones(4), np.zeros(4), atol=1e-16)  # shift invariance
    np.testing.assert_allclose(per_target.numpy(), [G.gamma_ce(z.numpy(), np.array([t]), 0.3, reduction="sum")
                                                    for t in (1, 2)], rtol=1e-15)
    assert not _kernel._compile_error


def test_double_backward_and_forward_mode_are_exact():
    # (tests/test_second_order.py checks them in every regime; here: they run and agree with the core)
    y = torch.tensor(Y)
    f = lambda z: GT.gamma_ce(z, y, 0.3, compiled=False)  # noqa: E731
    z = torch.tensor(Z, requires_grad=True)
    (g,) = torch.autograd.grad(f(z), z, create_graph=True)
    v = RNG.normal(size=Z.shape)
    (g * torch.tensor(v)).sum().backward()
    hv = G.gamma_ce_hvp(Z, Y, 0.3, v)
    np.testing.assert_allclose(z.grad.numpy(), hv, rtol=1e-13, atol=1e-300)
    h = torch.func.hessian(f)(torch.tensor(Z))
    np.testing.assert_allclose(h.reshape(Z.size, Z.size).numpy() @ v.ravel(), hv.ravel(), rtol=1e-13, atol=1e-300)


def test_functional_default_ignore_index_is_cross_entropys():
    # issue 20 item 6: as F.cross_entropy, the functional losses ignore -100 by default
    y = torch.tensor(Y_IGN)
    for compiled in (False, True):
        got = GT.gamma_ce(torch.tensor(Z), y, 0.0, compiled=compiled)
        assert float(got) == pytest.approx(float(torch.nn.functional.cross_entropy(torch.tensor(Z), y)), rel=1e-14)
    assert float(GT.tailr(torch.tensor(Z), y, 0.3, 0.2)) == pytest.approx(
        G.tailr(Z, Y_IGN, 0.3, 0.2, ignore_index=-100), rel=1e-14)
    with pytest.raises(ValueError, match="out of range"):
        GT.gamma_ce(torch.tensor(Z), y, 0.0, ignore_index=None)
    import inspect

    import gammace_ref.torch.distributed as GTD

    for fn in (GT.linear_gamma_ce, GT.linear_tailr, GTD.gamma_ce, GTD.tailr, GTD.linear_gamma_ce, GTD.linear_tailr):
        assert inspect.signature(fn).parameters["ignore_index"].default == -100, fn


# --- torch.compile and torch.func --------------------------------------------


def test_inside_a_compiled_region():
    @torch.compile(fullgraph=True)
    def step(z, y):  # compiled=True too: the adapter sees it is being traced and traces the core
        return GT.gamma_ce(z, y, 0.3, compiled=False, **KW) + 2.0 * GT.gamma_ce(z, y, 0.3, **KW)

    loss, grad = _vg(step, Z3, Y3)
    ref_l, ref_g = _core("gamma_ce", Z3, Y3, 0.3, **KW)
    assert loss == pytest.approx(3 * ref_l, rel=1e-13)
    np.testing.assert_allclose(grad, 3 * ref_g, rtol=1e-13, atol=1e-300)
    bad = torch.tensor(Y3)
    bad[1, 2] = 7  # nothing is read back in a traced region: NaN, not an exception
    assert torch.isnan(step(torch.tensor(Z3), bad))


@pytest.mark.parametrize("compiled", [False, True])
def test_func_grad_and_jacrev(compiled):
    f = lambda z: GT.gamma_ce(z, torch.tensor(Y3), 0.3, compiled=compiled, **KW)  # noqa: E731
    g = torch.func.grad(f)(torch.tensor(Z3))
    np.testing.assert_allclose(g.numpy(), _core("gamma_ce", Z3, Y3, 0.3, **KW)[1], rtol=1e-13, atol=1e-300)
    assert torch.equal(torch.func.jacrev(f)(torch.tensor(Z3)), g)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_func_vmap(reduction):
    zs = RNG.normal(0.0, 2.0, size=(3, 6, 5))
    ys = RNG.integers(0, 5, size=(3, 6))
    ys[1, 2] = -100
    kw = dict(reduction=reduction, ignore_index=-100, label_smoothing=0.1, compiled=False)
    f = lambda z, y: GT.tailr(z, y, 0.3, 0.2, **kw)  # noqa: E731
    zt, yt = torch.tensor(zs), torch.tensor(ys)
    loss = torch.func.vmap(f)(zt, yt).numpy()
    refs = [_core("tailr", zs[i], ys[i], 0.3, 0.2, **kw) for i in range(3)]
    np.testing.assert_allclose(loss, [r[0] for r in refs], rtol=1e-13)
    if reduction == "mean":
        grads = torch.func.vmap(torch.func.grad(f))(zt, yt).numpy()
        np.testing.assert_allclose(grads, [r[1] for r in refs], rtol=1e-13, atol=1e-300)
    ys[2, 4] = 9  # nothing is read back under vmap: that loss is NaN, the others stay exact
    loss = torch.func.vmap(f)(zt, torch.tensor(ys)).numpy()
    assert np.isnan(loss[2, 4] if reduction == "none" else loss[2]) and np.isfinite(loss[:2]).all()


# --- nn.Module losses --------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("shape", [(6, 5), (5,), (2, 5, 3, 4)])
def test_gamma_zero_module_is_cross_entropy_loss(shape, reduction, eps):
    z = RNG.normal(0.0, 3.0, size=shape)
    y = RNG.integers(0, 5, size=shape[:1] + shape[2:] if len(shape) > 1 else ())
    if y.ndim:
        y.flat[1] = -100
    kw = dict(reduction=reduction, label_smoothing=eps)
    v = torch.tensor(RNG.normal(size=y.shape)) if reduction == "none" else None
    loss, grad = _vg(GT.GammaCELoss(0.0, compiled=False, **kw), z, y, upstream=v)
    ref_l, ref_g = _vg(torch.nn.CrossEntropyLoss(**kw), z, y, upstream=v)
    np.testing.assert_allclose(loss, ref_l, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("module", [GT.GammaCELoss(0.4, label_smoothing=0.1, compiled=False),
                                    GT.TaiLrLoss(0.4, 0.2, reduction="sum", compiled=False)], ids=repr)
def test_modules_match_core(module):
    z, y = Z3, Y3  # (N, C, d1) with a -100 target: torch's layout and default ignore_index
    which, args = ("tailr", (0.4, 0.2)) if isinstance(module, GT.TaiLrLoss) else ("gamma_ce", (0.4,))
    loss, grad = _vg(module, z, y)
    ref_l, ref_g = _core(which, z, y, *args, axis=1, ignore_index=-100, reduction=module.reduction,
                         label_smoothing=module.label_smoothing)
    np.testing.assert_allclose(loss, ref_l, rtol=1e-13)
    np.testing.assert_allclose(grad, ref_g, rtol=1e-13, atol=1e-300)
    assert "gamma=0.4" in repr(module) and ("threshold=0.2" in repr(module)) == (which == "tailr")


# --- errors and dtypes -------------------------------------------------------

_z, _y = torch.tensor(Z), torch.tensor(Y)


@pytest.mark.parametrize(("call", "exc", "match"), [
    (lambda: GT.gamma_ce(_z, _y, float("nan")), ValueError, r"gamma must be in \[0, 1\], got nan"),
    (lambda: GT.gamma_ce(_z, _y, 1.5), ValueError, r"gamma must be in \[0, 1\], got 1.5"),
    (lambda: GT.gamma_ce(_z, _y, -0.1), ValueError, r"gamma must be in \[0, 1\], got -0.1"),
    (lambda: GT.tailr(_z, _y, 0.1, 1.2), ValueError, r"threshold must be in \[0, 1\], got 1.2"),
    (lambda: GT.gamma_ce(_z, _y.double(), 0.1), TypeError, "targets must have an integer dtype.*float64"),
    (lambda: GT.gamma_ce(_y.reshape(2, 3), _y[:2], 0.1), TypeError, "logits must have a real floating dtype"),
    (lambda: GT.gamma_ce(_z, _y[:4], 0.1), ValueError, r"targets shape \(4,\) does not match logits shape \(6, 5\)"),
    (lambda: GT.gamma_ce(_z, _y, 0.1, reduction="avg"), ValueError, "reduction must be one of .* got 'avg'"),
    (lambda: GT.gamma_ce(Z, Y, 0.1), TypeError, "logits must be a torch.Tensor, got numpy.ndarray"),
    (lambda: GT.GammaCELoss(0.1, label_smoothing=1.0), ValueError, r"label_smoothing must be in \[0, 1\), got 1.0"),
    (lambda: GT.GammaCELoss(1.5), ValueError, r"gamma must be in \[0, 1\], got 1.5"),
    (lambda: GT.GammaCELoss(0.1, reduction="avg"), ValueError, "reduction must be one of"),
    (lambda: GT.TaiLrLoss(0.1, -0.5), ValueError, r"threshold must be in \[0, 1\], got -0.5"),
])
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("compiled", [False, True])
def test_out_of_range_target_raises(compiled):
    y = Y3.copy()
    y[1, 2] = 7
    with pytest.raises(ValueError, match=r"targets: value 7 at index \(1, 2\) is out of range \[0, 5\)"):
        GT.gamma_ce(torch.tensor(Z3, requires_grad=True), torch.tensor(y), 0.3, compiled=compiled, **KW)


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_half_precision_computes_in_float32(low):
    z = torch.tensor(Z).to(getattr(torch, low)).requires_grad_()
    loss = GT.gamma_ce(z, _y, 0.3, label_smoothing=0.1, compiled=False)
    loss.backward()
    z32 = z.detach().float().requires_grad_()
    ref = GT.gamma_ce(z32, _y, 0.3, label_smoothing=0.1, compiled=False)
    ref.backward()
    assert loss.dtype == torch.float32 and z.grad.dtype == z.dtype  # the core's dtypes
    assert float(loss.detach()) == float(ref.detach())
    torch.testing.assert_close(z.grad, z32.grad.to(z.dtype), rtol=0, atol=0)
    exact = G.gamma_ce(z.detach().double().numpy(), Y, 0.3, label_smoothing=0.1)
    assert float(loss.detach()) == pytest.approx(exact, rel=1e-6)
