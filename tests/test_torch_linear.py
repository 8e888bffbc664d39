"""gammace_ref.torch's hidden-states path: compiled chunks, autocast, torch.compile / torch.func, statistics."""

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
F = torch.nn.functional

import gammace_ref.torch as GT  # noqa: E402
from gammace_ref import linear  # noqa: E402
from gammace_ref.torch import _linear  # noqa: E402

# torch's own warnings while it compiles (pyproject.toml makes warnings errors).
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")]


def layer(n=9, c=23, h_dim=6, seed=0, dtype=torch.float32, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, h_dim, generator=g, dtype=dtype)
    w = torch.randn(c, h_dim, generator=g, dtype=dtype) * 1.5
    b = torch.randn(c, generator=g, dtype=dtype) if bias else None
    y = torch.randint(0, c, (n,), generator=g)
    y[1] = -100
    return h, w, b, y


def loss_and_grads(fn, h, w, b, *args, **kw):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    b = None if b is None else b.clone().requires_grad_()
    loss = fn(h, w, *args, bias=b, **kw)
    loss.sum().backward()
    return loss.detach(), h.grad, w.grad, None if b is None else b.grad


def unique_graphs():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_compiled_chunks_equal_eager_with_one_compilation_per_family():
    """Whole rows and vocabulary blocks; other batch sizes and vocabularies reuse the compiled kernels."""
    kw = dict(ignore_index=-100, label_smoothing=0.1, chunk_size=4)
    for split in (None, 4 * linear.TEMPORARIES * 4 * 5):  # whole rows; blocks of 5 classes
        h, w, b, y = layer()
        eager = loss_and_grads(GT.linear_tailr, h, w, b, y, 0.3, 0.2, memory_budget=split, compiled=False, **kw)
        got = loss_and_grads(GT.linear_tailr, h, w, b, y, 0.3, 0.2, memory_budget=split, **kw)
        for u, v in zip(got, eager):
            torch.testing.assert_close(u, v, rtol=2e-5, atol=1e-7)
        before = unique_graphs()
        for n, c, gamma in ((13, 31, 0.5), (5, 17, 0.1)):  # other rows, classes, γ: no new graph
            h, w, b, y = layer(n, c, seed=n)
            got = loss_and_grads(GT.linear_tailr, h, w, b, y, gamma, 0.2, memory_budget=split, **kw)
            eager = loss_and_grads(GT.linear_tailr, h, w, b, y, gamma, 0.2, memory_budget=split, compiled=False, **kw)
            for u, v in zip(got, eager):
                torch.testing.assert_close(u, v, rtol=2e-5, atol=1e-7)
        assert unique_graphs() == before, "a new shape or γ recompiled the linear path"


def test_compiled_chunks_name_a_bad_row():
    h, w, b, y = layer()
    h[5, 0] = float("nan")
    with pytest.raises(ValueError, match=r"chunk of rows 4 to 6 .*row at index \(1,\) has maximum nan"):
        GT.linear_gamma_ce(h.requires_grad_(), w, y, 0.1, ignore_index=-100, chunk_size=4)


def test_autocast_computes_the_core_in_float32():
    """Issue 20, item 1: under bf16 autocast the loss was computed (and summed) in bf16."""
    g = torch.Generator().manual_seed(1)
    n, h_dim, c = 512, 32, 3000
    w = torch.randn(c, h_dim, generator=g) * h_dim ** -0.5
    y = torch.randint(0, c, (n,), generator=g)
    h = 2.0 * w[y] * h_dim ** 0.5 + torch.randn(n, h_dim, generator=g)  # informative: the loss is a few nats
    ref = loss_and_grads(GT.linear_gamma_ce, h, w, None, y, 0.1, chunk_size=100)
    dense = lambda a, bw, bias=None: GT.gamma_ce(F.linear(a, bw, bias), y, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_and_grads(GT.linear_gamma_ce, h, w, None, y, 0.1, chunk_size=100)
        mat = loss_and_grads(dense, h, w, None)  # the materialised path under the same autocast
    assert got[0].dtype == torch.float32
    err, err_mat = abs(float(got[0] - ref[0])), abs(float(mat[0] - ref[0]))
    assert err <= 2 * err_mat + 1e-6, (err, err_mat)  # bf16 logits only: the same error as the materialised path
    for i in (1, 2):  # the gradient products in float32: no worse than autocast's bf16 backward
        rel = float((got[i] - ref[i]).norm() / ref[i].norm())
        rel_mat = float((mat[i].float() - ref[i]).norm() / ref[i].norm())
        assert rel <= rel_mat, (i, rel, rel_mat)


def test_bfloat16_layers_accumulate_in_float32():
    h, w, b, y = layer(n=64, c=301, h_dim=16)
    ref = loss_and_grads(GT.linear_gamma_ce, h.bfloat16().float(), w.bfloat16().float(), b.bfloat16().float(), y,
                         0.2, ignore_index=-100, chunk_size=8, compiled=False)
    got = loss_and_grads(GT.linear_gamma_ce, h.bfloat16(), w.bfloat16(), b.bfloat16(), y, 0.2, ignore_index=-100,
                         chunk_size=8, compiled=False)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == got[3].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=0)
    for u, v in zip(got[1:], ref[1:]):  # float32 sums, rounded once to bfloat16
        torch.testing.assert_close(u, v.bfloat16(), rtol=0, atol=0)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "blocks"])
def test_torch_compile_fullgraph(split):
    h, w, b, y = layer()
    budget = 4 * linear.TEMPORARIES * 4 * 5 if split else None

    def step(h, w, b):
        return GT.linear_tailr(h, w, y, 0.3, 0.2, bias=b, ignore_index=-100, label_smoothing=0.1, chunk_size=4,
                               memory_budget=budget)

    ref = loss_and_grads(lambda h, w, bias: step(h, w, bias), h, w, b)
    got = loss_and_grads(lambda h, w, bias: torch.compile(step, fullgraph=True)(h, w, bias), h, w, b)
    for u, v in zip(got, ref):
        torch.testing.assert_close(u, v, rtol=2e-5, atol=1e-7)


def test_torch_func_grad_and_vmap():
    h, w, b, y = layer(dtype=torch.float64)
    kw = dict(bias=b, ignore_index=-100, label_smoothing=0.1, chunk_size=4, compiled=False)
    for budget in (None, 4 * linear.TEMPORARIES * 8 * 5):
        f = lambda hh, ww: GT.linear_gamma_ce(hh, ww, y, 0.3, memory_budget=budget, **kw)
        ref = loss_and_grads(lambda hh, ww, bias: f(hh, ww), h, w, None)
        gh, gw = torch.func.grad(f, argnums=(0, 1))(h, w)
        torch.testing.assert_close(gh, ref[1], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(gw, ref[2], rtol=1e-12, atol=1e-15)
        # vmap over a batch of sequences: one loss per sequence, as a loop gives
        hs = torch.stack([h, h.flip(0), 2 * h])
        ys = torch.stack([y, y.flip(0), y])
        g = lambda hh, yy: GT.linear_gamma_ce(hh, w, yy, 0.3, memory_budget=budget, **kw)
        got = torch.func.vmap(g)(hs, ys)
        torch.testing.assert_close(got, torch.stack([g(a, c) for a, c in zip(hs, ys)]), rtol=1e-13, atol=0)
        grads = torch.func.vmap(torch.func.grad(g))(hs, ys)  # per-sequence gradients
        for i in range(3):
            torch.testing.assert_close(grads[i], torch.func.grad(g)(hs[i], ys[i]), rtol=1e-12, atol=1e-15)


def test_statistics():
    """NLL (= cross-entropy, whatever γ), the mean weight, the fraction clipped at b."""
    h, w, b, y = layer(n=40, c=50, h_dim=5, dtype=torch.float64)
    y[1] = 3
    gamma, threshold = 0.4, 0.3
    z = F.linear(h, w, b)
    logp = torch.log_softmax(z, -1).gather(1, y[:, None])[:, 0]
    p = logp.exp()
    wgt = p / (gamma + (1 - gamma) * p)
    for split in (None, 4 * linear.TEMPORARIES * 8 * 7):
        loss, st = GT.linear_tailr(h.requires_grad_(), w, y, gamma, threshold, bias=b, chunk_size=8,
                                   memory_budget=split, return_stats=True, compiled=False)
        assert not st.nll.requires_grad and float(st.count) == 40
        m = st.means()
        assert m["nll"] == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-13)
        assert m["weight"] == pytest.approx(float(wgt.clamp(threshold, 1).mean()), rel=1e-13)
        assert m["clipped"] == float((wgt < threshold).double().mean()) > 0
        _, st_g = GT.linear_gamma_ce(h.detach(), w, y, gamma, bias=b, memory_budget=split, return_stats=True)
        assert st_g.means()["weight"] == pytest.approx(float(wgt.mean()), rel=1e-13) and float(st_g.clipped) == 0
    with pytest.raises(TypeError, match="return_stats must be a bool"):
        GT.linear_gamma_ce(h, w, y, 0.1, return_stats="yes")


def test_kernels_fall_back_to_eager_after_a_compile_failure(monkeypatch):
    monkeypatch.setattr(_linear, "_compile_error", [RuntimeError("no compiler")])
    monkeypatch.setattr(_linear._kernel, "_compile_error", _linear._compile_error)
    k = _linear.kernels(torch.device("cpu"), compiled=True)
    assert k.checks and k.addmm is _linear._addmm  # the eager pieces, with the in-place product
