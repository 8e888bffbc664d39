"""gammace_ref.linear with the vocabulary split into blocks: the same results as the unsplit path.

Exactness in every regime: each regime row becomes the bias of a layer whose
product is zero (``hidden = 0``, ``weight = 0``), so the logits are the row
itself, -inf and ±1e300 included, and the bias gradient is the logits
gradient; both are measured against mpmath (gammace_ref.testing.regimes) with
the accuracy table's tolerances, for blocks of 1, 2 and 3 classes (the
target, the maximum and the masked classes fall in different blocks).  Then
random layers against the unsplit path on every backend, the JAX adapter's
``lax.scan`` over blocks, torch autograd, a 256k vocabulary under a budget
below one row, and bad input.
"""

import numpy as np
import pytest

from gammace_ref import _validation, linear
from gammace_ref.testing import metrics, regimes

from test_linear import assert_grads_match  # the materialised reference and its error bounds

# torch.compile (the torch adapter's compiled chunks) warns about its own internals on first use.
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")]

LARGE_C = 1000  # the huge_vocab regime's classes here (its blocks: 1000 // width of them)
GAMMAS = (0.0, 1e-7, 0.5, 1.0 - 1e-9, 1.0)
ITEMSIZE = {"float32": 4, "float64": 8}


def budget_for(classes, dtype, rows=1):
    """The memory_budget giving blocks of ``classes`` classes for chunks of ``rows`` rows."""
    return linear.TEMPORARIES * ITEMSIZE[dtype] * rows * classes


def _row_through_bias(backend, fn, row, target, gamma, extra, width, dtype):
    c = len(row)
    zero_h, zero_w = np.zeros((1, 1), dtype), np.zeros((c, 1), dtype)
    # Under jax.jit γ is traced (one compilation per shape, not per γ).
    g = np.asarray(gamma, dtype=np.float64) if backend.lazy else gamma
    return backend.run(fn, zero_h, zero_w, np.array([target]), g, *extra, bias=np.asarray(row, dtype),
                       reduction="sum", chunk_size=1, memory_budget=budget_for(width, dtype))


@pytest.mark.parametrize("loss", ["gamma_ce", "tailr"])
def test_every_regime_against_mpmath(backend, dtype, loss):
    if backend.family == "dask" or backend.kind.value == "jax":
        # The same eager code as NumPy (random layers below cover them); op by op, their one-row calls are slow.
        pytest.skip("dask and eager JAX: covered by test_random_layers_equal_the_unsplit_path; jax.jit runs here")
    fn = linear.gamma_ce_value_and_grad if loss == "gamma_ce" else linear.tailr_value_and_grad
    threshold = None if loss == "gamma_ce" else regimes.TAILR_THRESHOLD
    extra = () if threshold is None else (threshold,)
    tol = regimes.TOLERANCE[dtype]
    worst = {}
    for regime in regimes.regimes(dtype, LARGE_C):
        arr, _ = regimes.as_dtype_rows(regime, dtype)
        widths = (64, 333) if arr.shape[1] == LARGE_C else (1, 2, 3)
        gammas = GAMMAS
        if backend.family == "jax":  # JAX compiles per shape (eagerly too): fewer shapes and values
            widths, gammas = widths[1:2], (0.0, 0.5, 1.0)
        for gamma in gammas:
            ref_l, ref_g = regimes.expected(regime.name, dtype, gamma, threshold, LARGE_C)
            for width in widths:
                for i, (row, target) in enumerate(zip(arr, regime.targets)):
                    out = _row_through_bias(backend, fn, row, target, gamma, extra, width, dtype)
                    err_v = metrics.rel_err(out[0], ref_l[i], dtype)
                    err_g = metrics.rel_err(out[3], ref_g[i], dtype)  # d bias = the logits gradient
                    key = (regime.name, gamma, width, i)
                    worst[key] = (err_v, err_g)
                    assert not np.any(out[1]) and not np.any(out[2]), key  # the products are zero
    bad = {k: v for k, v in worst.items() if max(v) > tol}
    assert not bad, bad


CASES = [
    ("mean", dict(), None),
    ("sum-smooth-tailr-bias", dict(bias=True, reduction="sum", ignore_index=-100, label_smoothing=0.1), 0.3),
    ("none-ignore", dict(reduction="none", ignore_index=-100), None),
    ("mean-bias-smooth-where", dict(bias=True, label_smoothing=0.2, where=True), None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_random_layers_equal_the_unsplit_path(backend, dtype, case):
    name, kw, threshold = case
    kw = dict(kw)
    rng = np.random.default_rng(5)
    n, c, h_dim = 9, 23, 6
    h = rng.normal(size=(n, h_dim)).astype(dtype)
    w = (rng.normal(size=(c, h_dim)) * 2).astype(dtype)
    b = rng.normal(size=c).astype(dtype) if kw.pop("bias", False) else None
    y = rng.integers(0, c, n)
    if "ignore_index" in kw:
        y[[1, 6]] = -100
    if kw.pop("where", False):
        kw["where"] = np.arange(n) % 3 != 1
    gamma = 0.3
    fn = linear.gamma_ce_value_and_grad if threshold is None else linear.tailr_value_and_grad
    extra = () if threshold is None else (threshold,)
    # blocks of 5 classes (4 of them and 3 left) in chunks of 4 rows; of 23 (unsplit) for comparison
    for width in ((5,) if backend.family == "jax" else (5, 7, 23)):  # JAX compiles per shape: one width
        out = backend.run(fn, h, w, y, gamma, *extra, bias=b, chunk_size=4, memory_budget=budget_for(width, dtype, 4),
                          **kw)
        kw_ref = {k: v for k, v in kw.items() if k != "where"}
        if "where" in kw:  # where=False counts as ignored
            kw_ref["ignore_index"] = -100
        assert_grads_match(out, h, w, b, np.where(kw.get("where", True), y, -100) if "where" in kw else y,
                           gamma, threshold, dtype, **kw_ref)


def test_block_sizes():
    def sizes(n, c, dtype, **kw):
        h, w = np.zeros((n, 3), dtype), np.zeros((c, 3), dtype)
        return linear.block_sizes(_validation.check_linear(h, w, None, np.zeros(n, int), _validation.options(0.1),
                                                           **{"memory_budget": None, "chunk_size": None, **kw}))

    assert sizes(7, 11, "float64") == (7, 11)  # the default budget: all at once
    row = linear.TEMPORARIES * 11 * 8
    assert sizes(7, 11, "float64", memory_budget=3 * row) == (3, 11)  # whole rows while one fits
    assert sizes(7, 11, "float64", memory_budget=row - 1) == (1, 10)  # below one row: blocks of classes
    assert sizes(7, 11, "float64", memory_budget=1) == (1, 1)
    assert sizes(7, 11, "float64", chunk_size=2) == (2, 11)  # chunk_size alone: whole rows
    assert sizes(7, 11, "float64", chunk_size=2, memory_budget=2 * 4 * linear.TEMPORARIES * 8) == (2, 4)
    # LM scale, 256k classes in float32: the budget holds 2**20 / 16 = 65536 floats per MiB.  Whole rows from
    # 16 MiB on; below, as many rows as blocks of MIN_BLOCK_CLASSES (4096) allow.
    c = 262144
    assert sizes(8192, c, "float32", memory_budget=2**26) == (16, c)
    assert sizes(8192, c, "float32", memory_budget=2**24) == (4, c)
    assert sizes(8192, c, "float32", memory_budget=2**22) == (1, c)  # exactly one row
    assert sizes(8192, c, "float32", memory_budget=2**22 - 1) == (63, 4161)
    assert sizes(8192, c, "float32", memory_budget=2**20) == (16, 4096)
    assert sizes(8192, c, "float32", memory_budget=2**14) == (1, 1024)


@pytest.mark.slow
def test_256k_classes_under_a_budget_below_one_row():
    """C = 262144 in float32: one row of logits is 1 MiB; the budget 512 KiB (its temporaries: 4 × 32768 floats)."""
    rng = np.random.default_rng(3)
    n, c, h_dim = 5, 262144, 8
    h = rng.normal(size=(n, h_dim)).astype(np.float32)
    w = (rng.normal(size=(c, h_dim)) * 0.7).astype(np.float32)
    b = rng.normal(size=c).astype(np.float32)
    y = np.array([0, c - 1, 123457, 5, 131072])
    budget = 2**19
    assert budget < c * 4
    a = _validation.check_linear(h, w, b, y, _validation.options(0.3, 0.2), memory_budget=budget, chunk_size=None)
    rows, classes = linear.block_sizes(a)
    assert classes < c and rows * classes * linear.TEMPORARIES * 4 <= budget
    out = linear.tailr_value_and_grad(h, w, y, 0.3, 0.2, bias=b, label_smoothing=0.1, memory_budget=budget)
    assert_grads_match(out, h, w, b, y, 0.3, 0.2, "float32", label_smoothing=0.1)


def test_jax_adapter_scans_the_blocks():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import gammace_ref.jax as GJ

    jnp = jax.numpy
    rng = np.random.default_rng(8)
    n, c, h_dim = 10, 29, 4
    h, w, b = rng.normal(size=(n, h_dim)), rng.normal(size=(c, h_dim)) * 2, rng.normal(size=c)
    y = rng.integers(0, c, n)
    y[3] = -100
    for reduction in ("mean", "none"):
        ct = jnp.linspace(0.5, 2.0, n) if reduction == "none" else 1.0
        kw = dict(bias=None, reduction=reduction, ignore_index=-100, label_smoothing=0.1, chunk_size=4,
                  memory_budget=budget_for(6, "float64", 4))  # 4 scanned blocks of 6 and 5 classes after

        def f(hh, ww, bb, kw=kw, ct=ct):
            return jnp.sum(GJ.linear_tailr(hh, ww, jnp.asarray(y), 0.3, 0.2, **dict(kw, bias=bb)) * ct)

        value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(*map(jnp.asarray, (h, w, b)))
        ref = linear.tailr_value_and_grad(h, w, y, 0.3, 0.2, **dict(kw, bias=b, chunk_size=None, memory_budget=None,
                                                                    reduction="none"))
        _, g, _ = _materialised(h, w, b, y)
        g = g * (np.asarray(ct)[:, None] if reduction == "none" else 1.0 / np.sum(y != -100))
        np.testing.assert_allclose(float(value), float(np.sum(ref.loss * np.asarray(ct))
                                                       / (1 if reduction == "none" else np.sum(y != -100))),
                                   rtol=1e-13)
        for got, want in zip(grads, (g @ w, g.T @ h, g.sum(0))):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-11, atol=1e-14)


def _materialised(h, w, b, y):
    from test_linear import materialised

    return materialised(h, w, b, y, 0.3, 0.2, reduction="none", ignore_index=-100, label_smoothing=0.1)


def test_torch_adapter_with_blocks_and_gradcheck():
    torch = pytest.importorskip("torch")
    import gammace_ref.torch as GT

    rng = np.random.default_rng(2)
    n, c, h_dim = 6, 13, 3
    h = torch.tensor(rng.normal(size=(n, h_dim)), requires_grad=True)
    w = torch.tensor(rng.normal(size=(c, h_dim)), requires_grad=True)
    b = torch.tensor(rng.normal(size=c), requires_grad=True)
    y = torch.tensor([0, 12, 5, -100, 7, 7])
    for reduction in ("mean", "none"):
        f = lambda h, w, b, r=reduction: GT.linear_gamma_ce(h, w, y, 0.3, bias=b, reduction=r, ignore_index=-100,
                                                        compiled=False,
                                                        label_smoothing=0.1, chunk_size=2,
                                                        memory_budget=budget_for(4, "float64", 2))
        assert torch.autograd.gradcheck(f, (h, w, b))


def _poisoned(rows, n=5, c=11, seed=0):
    """``(hidden, weight)`` whose logits are N(0, 1) but for ``rows`` {row: (class, kind)}: +inf, NaN or all -inf.

    Made by overflowing products (1e200 · ±1e200) in extra hidden units that
    only the poisoned row uses, so no ``0 · nan`` leaks into the other rows.
    """
    rng = np.random.default_rng(seed)
    h = np.concatenate([rng.normal(size=(n, 3)), np.zeros((n, 2))], axis=1)
    w = np.concatenate([rng.normal(size=(c, 3)), np.zeros((c, 2))], axis=1)
    for r, (j, kind) in rows.items():
        h[r, 3:] = 1e200
        if kind == "-inf":
            w[:, 3] = -1e200
        else:
            w[j, 3] = 1e200
            w[j, 4] = -1e200 if kind == "nan" else 0.0
    return h, w


BAD = [
    ("nan in a later block", {2: (9, "nan")}, r"chunk of rows 2 to 2 .*row at index \(0,\) has maximum nan"),
    ("+inf in the first block", {1: (0, "inf")}, r"chunk of rows 1 to 1 .*row at index \(0,\) has maximum inf"),
    ("all -inf", {3: (0, "-inf")}, r"chunk of rows 3 to 3 .*row at index \(0,\) has maximum -inf"),
]


@pytest.mark.parametrize("what, rows, match", BAD, ids=[b[0] for b in BAD])
def test_bad_rows_are_named(what, rows, match):
    torch = pytest.importorskip("torch")  # overflowing products without NumPy's floating-point warnings
    h, w = map(torch.from_numpy, _poisoned(rows))
    y = torch.tensor([0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match=match):
        linear.gamma_ce_value_and_grad(h, w, y, 0.1, chunk_size=1, memory_budget=budget_for(3, "float64"))
    with pytest.raises(ValueError, match=r"targets: value 11 at index \(4,\) is out of range \[0, 11\)"):
        linear.gamma_ce_value_and_grad(h, w, torch.tensor([0, 1, 2, 3, 11]), 0.1, chunk_size=1,
                                       memory_budget=budget_for(3, "float64"))


def test_ignored_masked_rows_count_for_nothing_and_traced_poison_is_nan():
    """An ignored row of -inf counts for nothing; under jax.jit a NaN row gives NaN, never a number."""
    torch = pytest.importorskip("torch")
    h, w = map(torch.from_numpy, _poisoned({1: (0, "-inf")}))
    y = torch.tensor([0, -100, 2, 3, 4])
    kw = dict(ignore_index=-100, chunk_size=2, memory_budget=budget_for(3, "float64", 2))
    out = linear.gamma_ce_value_and_grad(h, w, y, 0.2, **kw)
    keep = torch.tensor([0, 2, 3, 4])
    ref = linear.gamma_ce_value_and_grad(h[keep], w, y[keep], 0.2, **kw)
    assert float(out.loss) == pytest.approx(float(ref.loss), rel=1e-14)  # chunks of other rows: other sums
    torch.testing.assert_close(out.weight, ref.weight, rtol=1e-13, atol=1e-16)
    assert not torch.any(out.hidden[1])
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    hn, wn = _poisoned({2: (9, "nan")})
    f = jax.jit(lambda hh, ww: linear.gamma_ce(hh, ww, jax.numpy.asarray(y.numpy()), 0.2, **kw))
    assert np.isnan(float(f(hn, wn)))
