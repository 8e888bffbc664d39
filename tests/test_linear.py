"""gammace_ref.linear: γ-CE / TaiLr from hidden states, chunk by chunk, against the materialised path.

The reference is the core on the full logits ``hidden @ weight.T + bias``
(NumPy, float64) chained through the layer: ``d hidden = G @ W``,
``d weight = G.T @ hidden``, ``d bias = Σ_rows G``; in the hard regimes, the
mpmath reference.  Gradient entries are sums of products of mixed signs, so
their error is measured against the sum of the absolute products (the
condition of the sum), e.g. ``|G| @ |W|`` for ``d hidden``.
"""

import gc

import numpy as np
import pytest

import gammace_ref as G
from gammace_ref import _validation, linear
from gammace_ref.testing import metrics, reference

# torch.compile (the torch adapter's compiled chunks) warns about its own internals on first use.
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")]

RNG = np.random.default_rng(11)
N, C, H = 7, 11, 5
HIDDEN = RNG.normal(0.0, 1.0, size=(N, H))
WEIGHT = RNG.normal(0.0, 1.0, size=(C, H))
BIAS = RNG.normal(0.0, 1.0, size=C)
TARGETS = np.array([0, 10, 3, 3, 7, 1, 5])
IGNORED = np.array([0, -100, 3, 3, -100, 1, 5])
TOL = {"float64": 1e-12, "float32": 2e-5}

# (name, kwargs of the linear functions, tailr threshold or None, targets, hidden shape)
CASES = [
    ("mean", dict(), None, TARGETS, (N, H)),
    ("sum-ignore-smooth-tailr-bias", dict(bias=True, reduction="sum", ignore_index=-100, label_smoothing=0.1),
     0.3, IGNORED, (N, H)),
    ("none-ignore-3d-gamma1", dict(reduction="none", ignore_index=-100), None, IGNORED, (1, N, H)),
    ("mean-bias-smooth", dict(bias=True, label_smoothing=0.2), None, TARGETS, (N, H)),
    ("mean-all-ignored", dict(bias=True, ignore_index=-1), 0.2, np.full(N, -1), (N, H)),
]


def materialised(h, w, b, y, gamma, threshold=None, **kw):
    """The reference: logits in float64, the core, then the chain rule."""
    h2 = np.asarray(h, np.float64).reshape(-1, w.shape[1])
    z = h2 @ np.asarray(w, np.float64).T + (0.0 if b is None else np.asarray(b, np.float64))
    y2 = np.asarray(y).reshape(-1)
    if threshold is None:
        loss, g = G.gamma_ce_value_and_grad(z, y2, gamma, **kw)
    else:
        loss, g = G.tailr_value_and_grad(z, y2, gamma, threshold, **kw)
    return loss, g, h2


def assert_grads_match(out, h, w, b, y, gamma, threshold, dtype, **kw):
    """``out`` (NumPy arrays of a LinearGrads) against the materialised reference."""
    tol = TOL[dtype]
    ref_loss, g, h2 = materialised(h, w, b, y, gamma, threshold, **kw)
    loss = np.asarray(out[0], np.float64)
    if kw.get("reduction") == "none":
        ref_loss = ref_loss.reshape(np.shape(y))
    assert loss.shape == np.shape(ref_loss)
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol * 1e-3)
    w64, ag = np.asarray(w, np.float64), np.abs(g)
    checks = [("hidden", out[1], (g @ w64).reshape(np.shape(h)), (ag @ np.abs(w64)).reshape(np.shape(h))),
              ("weight", out[2], g.T @ h2, ag.T @ np.abs(h2))]
    if b is not None:
        checks.append(("bias", out[3], g.sum(0), ag.sum(0)))
    else:
        assert out[3] is None
    for name, got, ref, bound in checks:
        got = np.asarray(got, np.float64)
        assert got.shape == ref.shape, name
        err = np.abs(got - ref)
        assert np.all(err <= tol * bound + 1e-300), (name, float(np.max(err / np.maximum(bound, 1e-300))))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_agrees_with_the_materialised_path(backend, dtype, case):
    name, kw, threshold, y, shape = case
    kw = dict(kw)
    b = BIAS.astype(dtype) if kw.pop("bias", False) else None
    h, w = HIDDEN.reshape(shape).astype(dtype), WEIGHT.astype(dtype)
    y = y.reshape(shape[:-1])
    gamma = 1.0 if "gamma1" in name else 0.3
    # None: the default budget, one chunk here.  JAX compiles per shape (each operation, eagerly): fewer shapes.
    chunks = ([3] if backend.family == "jax" else [1, 3, None]) if name == "mean" else [3]
    for chunk in chunks:
        if threshold is None:
            out = backend.run(linear.gamma_ce_value_and_grad, h, w, y, gamma, bias=b, chunk_size=chunk, **kw)
        else:
            out = backend.run(linear.tailr_value_and_grad, h, w, y, gamma, threshold, bias=b, chunk_size=chunk,
                              **kw)
        assert out[1].dtype == dtype and out[2].dtype == dtype and out[1].shape == shape
        assert_grads_match(out, h, w, b, y, gamma, threshold, dtype, **kw)
        if name == "mean-all-ignored":
            assert out[0] == 0.0 and not np.any(out[1]) and not np.any(out[2]) and not np.any(out[3])


def test_hard_regimes_against_mpmath(backend):
    """Rows with 1 - p far below eps and log p ≪ -700: W = I makes the logits exactly the hidden rows."""
    rows = np.array([[60.0, 0.0, 0.0, -5.0],   # target the maximum by 60: q ≈ 2e-26
                     [0.0, 40.0, 1.0, 2.0],    # target the maximum by 38
                     [900.0, 0.0, -1.0, 0.5],  # target 900 below the maximum: log p ≈ -900
                     [0.5, -0.25, 0.125, 3.0]])
    y = np.array([0, 1, 1, 2])
    w = np.eye(4)
    for gamma, threshold in ((0.1, None), (0.9, None), (1.0, None), (0.5, 0.2)):
        kw = dict(reduction="sum", label_smoothing=0.1 if threshold else 0.0)
        fn = linear.gamma_ce_value_and_grad if threshold is None else linear.tailr_value_and_grad
        extra = () if threshold is None else (threshold,)
        out = backend.run(fn, rows, w, y, gamma, *extra, chunk_size=3, **kw)
        ref_l, ref_g = reference.batch([list(r) for r in rows], list(y), gamma, threshold,
                                       label_smoothing=kw["label_smoothing"], reduction="sum")
        assert metrics.rel_err(out[0], ref_l, "float64") <= 1e-12
        assert metrics.rel_err(out[1], ref_g, "float64") <= 1e-12  # d hidden = G @ I = G
        g = metrics.to_float64(ref_g)
        err = np.abs(out[2] - g.T @ rows)
        assert np.all(err <= 1e-12 * (np.abs(g).T @ np.abs(rows)) + 1e-300)


def test_value_only_functions_equal_the_value_of_value_and_grad():
    for fn, vg, extra in ((linear.gamma_ce, linear.gamma_ce_value_and_grad, ()),
                          (linear.tailr, linear.tailr_value_and_grad, (0.2,))):
        for reduction in ("none", "sum", "mean"):
            kw = dict(bias=BIAS, reduction=reduction, ignore_index=-100, label_smoothing=0.1, chunk_size=3)
            value = fn(HIDDEN, WEIGHT, IGNORED, 0.4, *extra, **kw)
            np.testing.assert_array_equal(value, vg(HIDDEN, WEIGHT, IGNORED, 0.4, *extra, **kw).loss)


def test_empty_batch():
    out = linear.gamma_ce_value_and_grad(np.zeros((0, H)), WEIGHT, np.zeros(0, int), 0.1, bias=BIAS)
    assert out.loss == 0.0 and out.hidden.shape == (0, H)
    assert not np.any(out.weight) and not np.any(out.bias)
    none = linear.gamma_ce_value_and_grad(np.zeros((0, H)), WEIGHT, np.zeros(0, int), 0.1, reduction="none")
    assert none.loss.shape == (0,)


def test_half_precision_hidden_computes_in_float32():
    h, w = HIDDEN.astype(np.float16), WEIGHT.astype(np.float16)
    out = linear.gamma_ce_value_and_grad(h, w, TARGETS, 0.2, chunk_size=3)
    assert out.loss.dtype == np.float32 and out.hidden.dtype == out.weight.dtype == np.float16
    ref = linear.gamma_ce_value_and_grad(h.astype(np.float64), w.astype(np.float64), TARGETS, 0.2)
    assert float(out.loss) == pytest.approx(float(ref.loss), rel=1e-6)
    np.testing.assert_allclose(out.weight, ref.weight, rtol=1e-2, atol=1e-3)


def test_inputs_are_not_modified():
    h, w, b, y = HIDDEN.copy(), WEIGHT.copy(), BIAS.copy(), IGNORED.copy()
    linear.tailr_value_and_grad(h, w, y, 0.1, 0.2, bias=b, ignore_index=-100, label_smoothing=0.1, chunk_size=2)
    for got, orig in ((h, HIDDEN), (w, WEIGHT), (b, BIAS), (y, IGNORED)):
        np.testing.assert_array_equal(got, orig)


# --- the memory budget ------------------------------------------------------


def test_chunk_rows_from_the_budget():
    assert linear.chunk_rows(32000, 4) == linear.DEFAULT_MEMORY_BUDGET // (linear.TEMPORARIES * 32000 * 4) == 524
    assert linear.chunk_rows(1000, 8, 10 * linear.TEMPORARIES * 1000 * 8) == 10
    assert linear.chunk_rows(1000, 8, 10 * linear.TEMPORARIES * 1000 * 8 - 1) == 9
    assert linear.chunk_rows(128000, 8, 1) == 1  # never less than a row


class _checked:
    def __init__(self, **kw):
        self.chunk_size = linear.chunk_size(_validation.check_linear(HIDDEN, WEIGHT, None, TARGETS,
                                                                     _validation.options(0.1), **kw))


def test_budget_resolution():
    row = linear.TEMPORARIES * C * 8  # bytes of one row's temporaries, float64
    assert _checked(memory_budget=None, chunk_size=None).chunk_size == N  # the default budget holds it all
    assert _checked(memory_budget=3 * row, chunk_size=None).chunk_size == 3
    assert _checked(memory_budget=1, chunk_size=None).chunk_size == 1
    assert _checked(memory_budget=3 * row, chunk_size=5).chunk_size == 5  # chunk_size overrides
    assert _checked(memory_budget=None, chunk_size=10**6).chunk_size == N  # capped at the batch
    ref = linear.gamma_ce_value_and_grad(HIDDEN, WEIGHT, TARGETS, 0.3, chunk_size=N)
    out = linear.gamma_ce_value_and_grad(HIDDEN, WEIGHT, TARGETS, 0.3, memory_budget=2 * row)
    assert float(out.loss) == pytest.approx(float(ref.loss), rel=1e-14)
    np.testing.assert_allclose(out.weight, ref.weight, rtol=1e-12, atol=1e-15)


def _rss_peak_extra(fn):
    """Peak resident bytes of ``fn()`` above those before it (Linux; as benchmarks/_common.py)."""
    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("no /proc/self/clear_refs")
    before = status("VmRSS")
    out = fn()
    peak = status("VmHWM")
    del out
    return peak - before


def test_peak_memory_follows_the_budget():
    rng = np.random.default_rng(0)
    n, c, width = 4096, 2000, 16
    h, w, y = rng.normal(size=(n, width)), rng.normal(size=(c, width)) * 0.3, rng.integers(0, c, n)
    logits_bytes = n * c * 8  # 64 MiB
    budget = 4 * 2**20
    outputs = (n + c) * width * 8 + c * width * 8  # the gradients, and one C×H product
    fused = _rss_peak_extra(lambda: linear.gamma_ce_value_and_grad(h, w, y, 0.1, memory_budget=budget))
    dense = _rss_peak_extra(lambda: G.gamma_ce_value_and_grad(h @ w.T, y, 0.1))
    assert fused <= budget + outputs + 8 * 2**20, fused
    assert dense >= logits_bytes and fused * 4 <= dense, (fused, dense)


# --- bad input --------------------------------------------------------------

BAD = [
    (dict(hidden=[[1.0]]), TypeError, "hidden must be an array"),
    (dict(weight=WEIGHT[0]), ValueError, r"weight must be 2-d \(classes, hidden\), got shape \(5,\)"),
    (dict(weight=WEIGHT[:, :4]), ValueError, "last axis of hidden must have weight.shape.1. = 4"),
    (dict(weight=WEIGHT[:0]), ValueError, "weight has no classes"),
    (dict(bias=BIAS[:3]), ValueError, r"bias shape \(3,\) does not match weight shape \(11, 5\)"),
    (dict(bias=BIAS.astype(np.float32)), TypeError, "bias dtype float32 differs from hidden dtype float64"),
    (dict(weight=WEIGHT.astype(np.float32)), TypeError, "weight dtype float32 differs from hidden dtype"),
    (dict(hidden=HIDDEN.astype(int)), TypeError, "hidden must have a real floating dtype"),
    (dict(targets=TARGETS[:3]), ValueError, r"targets shape \(3,\) does not match hidden shape \(7, 5\)"),
    (dict(targets=TARGETS * 1.0), TypeError, "targets must have an integer dtype"),
    (dict(hidden=np.float64(1.0)), TypeError, "hidden must be an array"),
    (dict(chunk_size=0), ValueError, "chunk_size must be a positive int, got 0"),
    (dict(chunk_size=2.0), TypeError, "chunk_size must be a positive int, got float 2.0"),
    (dict(chunk_size=True), TypeError, "chunk_size must be a positive int"),
    (dict(memory_budget=-5), ValueError, "memory_budget must be a positive int, got -5"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(gamma=1.5), ValueError, r"gamma must be in \[0, 1\], got 1.5"),
    (dict(label_smoothing=1.0), ValueError, r"label_smoothing must be in \[0, 1\)"),
    (dict(ignore_index=1.5), TypeError, "ignore_index must be an int or None"),
    (dict(targets=np.array([0, 10, 3, 3, 7, 11, 5])), ValueError,
     r"targets: value 11 at index \(5,\) is out of range \[0, 11\)"),
    (dict(hidden=np.where(np.arange(N)[:, None] == 4, np.nan, HIDDEN)), ValueError,
     r"chunk of rows 4 to 5 .*logits: the row at index \(0,\) has maximum nan"),
]


@pytest.mark.parametrize("change, exc, match", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_named(change, exc, match):
    args = dict(hidden=HIDDEN, weight=WEIGHT, targets=TARGETS, gamma=0.1, bias=None, reduction="mean",
                ignore_index=None, label_smoothing=0.0, memory_budget=None, chunk_size=2)
    args.update(change)
    with pytest.raises(exc, match=match):
        linear.gamma_ce_value_and_grad(args.pop("hidden"), args.pop("weight"), args.pop("targets"),
                                       args.pop("gamma"), **args)


def test_mixed_libraries_and_module_is_backend_blind():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="must come from the same array library"):
        linear.gamma_ce_value_and_grad(HIDDEN, torch.from_numpy(WEIGHT), TARGETS, 0.1)
    import ast
    import pathlib

    tree = ast.parse((pathlib.Path(G.__file__).parent / "linear.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "level", 0) == 0:
            for mod in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]):
                assert mod.split(".")[0] not in {"numpy", "torch", "jax", "cupy", "dask"}, mod


# --- torch adapter ----------------------------------------------------------


def _torch_params(dtype, bias=True):
    torch = pytest.importorskip("torch")
    h = torch.tensor(HIDDEN, dtype=dtype, requires_grad=True)
    w = torch.tensor(WEIGHT, dtype=dtype, requires_grad=True)
    b = torch.tensor(BIAS, dtype=dtype, requires_grad=True) if bias else None
    return torch, h, w, b


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_adapter_backward_matches_the_core(reduction):
    torch = pytest.importorskip("torch")
    import gammace_ref.torch as GT

    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        _, h, w, b = _torch_params(dtype)
        y = torch.from_numpy(IGNORED)
        kw = dict(bias=b, reduction=reduction, ignore_index=-100, label_smoothing=0.1, chunk_size=3)
        loss = GT.linear_tailr(h, w, y, 0.3, 0.2, compiled=False, **kw)  # compiled: test_torch_linear.py
        ct = torch.linspace(0.5, 2.0, N, dtype=dtype) if reduction == "none" else torch.tensor(1.5, dtype=dtype)
        (loss * ct).sum().backward()
        ref = linear.tailr_value_and_grad(HIDDEN, WEIGHT, IGNORED, 0.3, 0.2, **dict(kw, bias=BIAS))
        c = ct.numpy().astype(np.float64)
        np.testing.assert_allclose(loss.detach().numpy(), ref.loss, rtol=tol)
        if reduction == "none":  # the vjp with per-target weights: through the materialised path
            _, g, _ = materialised(HIDDEN, WEIGHT, BIAS, IGNORED, 0.3, 0.2, reduction="none", ignore_index=-100,
                                   label_smoothing=0.1)
            g = g * c[:, None]
            refs = (g @ WEIGHT, g.T @ HIDDEN, g.sum(0))
        else:
            refs = (ref.hidden * c, ref.weight * c, ref.bias * c)
        for t, r in zip((h, w, b), refs):
            np.testing.assert_allclose(t.grad.numpy(), r, rtol=tol * 10, atol=tol * 1e-2)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_adapter_gradcheck(reduction):
    torch = pytest.importorskip("torch")
    _, h, w, b = _torch_params(torch.float64)
    import gammace_ref.torch as GT

    y = torch.from_numpy(IGNORED)
    f = lambda h, w, b: GT.linear_gamma_ce(h, w, y, 0.3, bias=b, reduction=reduction, compiled=False,
                                           ignore_index=-100, label_smoothing=0.1, chunk_size=2)
    assert torch.autograd.gradcheck(f, (h, w, b))


def test_torch_adapter_without_grad_and_errors():
    torch = pytest.importorskip("torch")
    import gammace_ref.torch as GT

    h, w, y = torch.from_numpy(HIDDEN), torch.from_numpy(WEIGHT), torch.from_numpy(TARGETS)
    loss = GT.linear_gamma_ce(h, w, y, 0.2, chunk_size=3, compiled=False)
    assert not loss.requires_grad
    assert float(loss) == pytest.approx(float(linear.gamma_ce(HIDDEN, WEIGHT, TARGETS, 0.2)), rel=1e-14)
    w2 = w.clone().requires_grad_()
    GT.linear_gamma_ce(h, w2, y, 0.2, compiled=False).backward()  # only the weight tracked
    assert w2.grad is not None and h.grad is None
    with pytest.raises(TypeError, match="hidden must be a torch.Tensor, got numpy.ndarray"):
        GT.linear_gamma_ce(HIDDEN, w, y, 0.2)
    with pytest.raises(ValueError, match="targets: value 11"):
        GT.linear_gamma_ce(h, w2, torch.full((N,), 11), 0.2, compiled=False)


# --- JAX adapter ------------------------------------------------------------


@pytest.mark.parametrize("reduction, jit", [("mean", False), ("mean", True), ("sum", True), ("none", True)])
def test_jax_adapter_grad_matches_the_core(reduction, jit):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import gammace_ref.jax as GJ

    jnp = jax.numpy
    y = jnp.asarray(IGNORED)
    ct = jnp.linspace(0.5, 2.0, N) if reduction == "none" else 1.5

    def f(h, w, b):
        loss = GJ.linear_gamma_ce(h, w, y, 0.3, bias=b, reduction=reduction, ignore_index=-100,
                                  label_smoothing=0.1, chunk_size=3)
        return jnp.sum(loss * ct)
    wrap = jax.jit if jit else (lambda fn: fn)
    value, grads = wrap(jax.value_and_grad(f, argnums=(0, 1, 2)))(*map(jnp.asarray, (HIDDEN, WEIGHT, BIAS)))
    _, g, _ = materialised(HIDDEN, WEIGHT, BIAS, IGNORED, 0.3, reduction=reduction, ignore_index=-100,
                           label_smoothing=0.1)
    g = g * (np.asarray(ct)[:, None] if reduction == "none" else ct)
    for got, ref in zip(grads, (g @ WEIGHT, g.T @ HIDDEN, g.sum(0))):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-11, atol=1e-14)
    ref_loss = linear.gamma_ce(HIDDEN, WEIGHT, IGNORED, 0.3, bias=BIAS, reduction=reduction, ignore_index=-100,
                               label_smoothing=0.1)
    assert float(value) == pytest.approx(float(np.sum(ref_loss * np.asarray(ct))), rel=1e-13)


def test_jax_adapter_check_grads_and_tailr():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from jax.test_util import check_grads

    import gammace_ref.jax as GJ

    jnp = jax.numpy
    y = jnp.asarray(TARGETS)
    args = tuple(map(jnp.asarray, (HIDDEN, WEIGHT, BIAS)))
    for reduction in ("mean", "none"):
        f = jax.jit(lambda h, w, b, r=reduction: GJ.linear_gamma_ce(h, w, y, 0.4, bias=b, reduction=r, chunk_size=3))
        check_grads(f, args, order=1, modes=["rev"])
    # TaiLr: the paper's gradient (weight held constant), equal to the core's; traced γ under jit.
    grad = jax.jit(jax.grad(lambda h, g: GJ.linear_tailr(h, args[1], y, g, 0.2, chunk_size=4)))(args[0], 0.3)
    ref = linear.tailr_value_and_grad(HIDDEN, WEIGHT, TARGETS, 0.3, 0.2)
    np.testing.assert_allclose(np.asarray(grad), ref.hidden, rtol=1e-12, atol=1e-15)
