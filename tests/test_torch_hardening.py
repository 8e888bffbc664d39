"""Issue 16 items 1, 2, 4 and 10 and issue 20 item 4 on the torch adapter's compiled kernel.

Compilations cost seconds to a minute on a small CPU: every compiled call
here uses one of two signatures (float64 logits of 2 dimensions, mean,
ignore_index given, with and without label smoothing, gradient wanted),
which :func:`test_warmup_compiles_ahead_and_later_calls_compile_nothing`
compiles first.
"""

import logging
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: the PyTorch adapter cannot be tested")

import gammace_ref as G  # noqa: E402
from gammace_ref import torch as GT  # noqa: E402
from gammace_ref.torch import _kernel  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")]

RNG = np.random.default_rng(16)
WARM = dict(dtypes=torch.float64, ranks=2, reduction="mean", ignore_index=-100, label_smoothing=(0.0, 0.1),
            grad=True)


def _graphs():
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _check_against_core(z, y, *args, **kw):
    """The compiled adapter's loss and gradient against the NumPy core's (float64), for ``GT.gamma_ce``/``tailr``."""
    fn = GT.tailr if len(args) == 2 else GT.gamma_ce
    zt = torch.tensor(z, requires_grad=True)
    loss = fn(zt, torch.tensor(y), *args, **kw)
    loss.backward()
    core = G.tailr_value_and_grad if len(args) == 2 else G.gamma_ce_value_and_grad
    kw.pop("compiled", None)
    with np.errstate(all="ignore"):
        ref_l, ref_g = core(z, y, *args, **kw)
    np.testing.assert_allclose(loss.detach().numpy(), ref_l, rtol=1e-13, atol=0)
    # With smoothing a component (k + ε)·p_j - ε/C is accurate relative to its larger term (docs/numerics.md).
    np.testing.assert_allclose(zt.grad.numpy(), ref_g, rtol=1e-13, atol=2e-13 * kw.get("label_smoothing", 0) + 1e-300)
    return zt.grad.numpy()


# --------------------------------------------------------------------------- issue 20 item 4, issue 16 item 10


def test_warmup_compiles_ahead_and_later_calls_compile_nothing():
    if _kernel._compile_error:
        pytest.skip(f"torch.compile is unavailable here: {_kernel._compile_error[0]}")
    GT.warmup(**WARM)
    assert GT.warmup(**WARM) == 0  # already compiled: nothing to do
    graphs = _graphs()
    for n, c in [(5, 7), (1, 7), (3, 2), (8, 3), (0, 4), (3, 1), (2, 5000)]:  # no size has a graph of its own
        z = RNG.normal(0.0, 3.0, size=(n, c))
        y = RNG.integers(0, c, size=n)
        for gamma, eps, ii in [(0.3, 0.1, -100), (0.7, 0.2, -100), (0.3, 0.0, -100), (1e-7, 0.05, -1)]:
            if n > 2:
                y[1] = ii
            _check_against_core(z, y, gamma, ignore_index=ii, label_smoothing=eps)
    assert _graphs() == graphs, "a batch size, class count, γ, ε or ignore_index value recompiled the core"


def test_a_single_class_shares_the_graph_and_a_strided_layout_has_its_own(monkeypatch, caplog):
    # C = 1 and N = 1 (0/1-specialised before) share the graph; logits whose class axis is moved last
    # (strided) are a signature of their own, announced like any other, not a silent recompilation.
    kernels = _kernel._Kernels()
    monkeypatch.setattr(_kernel, "_compiled_kernel", lambda: kernels)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # the signatures, not a compiler, are tested here
    with caplog.at_level(logging.INFO, logger="gammace_ref"):
        for shape, axis in [((4, 5), -1), ((1, 5), -1), ((4, 1), -1), ((1, 1), -1), ((2, 5, 3), 1), ((2, 5), 1)]:
            y_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
            GT.gamma_ce(torch.zeros(shape, dtype=torch.float64, requires_grad=True),
                        torch.zeros(y_shape, dtype=torch.int64), 0.3, axis=axis).backward()
    assert len(kernels.regions) == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "gammace_ref"]
    assert len(messages) == 2 and "strided float64 logits with 3 dimension(s)" in messages[1]
    assert "strided" not in messages[0]


def test_each_compilation_is_announced_once_at_info_with_what_and_why(monkeypatch, caplog):
    kernels = _kernel._Kernels()
    monkeypatch.setattr(_kernel, "_compiled_kernel", lambda: kernels)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    z3, y3 = torch.zeros(2, 4, 3, dtype=torch.float32), torch.zeros(2, 3, dtype=torch.int64)
    with caplog.at_level(logging.INFO, logger="gammace_ref"):
        for _ in range(2):  # the second round compiles nothing: nothing more is logged
            GT.gamma_ce(z3.clone().requires_grad_(), y3, 0.1, axis=1, ignore_index=-100).backward()  # train
            with torch.no_grad():
                GT.gamma_ce(z3, y3, 0.1, axis=1, ignore_index=-100)  # eval
            GT.tailr(z3, y3, 0.1, 0.2, axis=1, reduction="sum", label_smoothing=0.1, ignore_index=None)
    messages = [r.getMessage() for r in caplog.records if r.name == "gammace_ref"]
    assert len(messages) == 3 and all(m.startswith("gammace_ref.torch: compiling the core") for m in messages)
    assert "float32 logits with 3 dimension(s) on cpu, value and gradient, reduction='mean', γ-CE" in messages[0]
    assert "value only" in messages[1]
    assert "reduction='sum', TaiLr, no ignore_index, label smoothing" in messages[2]


def test_warmup_rejects_a_bad_rank():
    with pytest.raises(ValueError, match="ranks"):
        GT.warmup(ranks=0)


# --------------------------------------------------------------------------- issue 16 item 2 (torch)


@pytest.mark.parametrize("compiled", [False, True])
def test_an_ignored_row_gets_a_zero_gradient_in_the_adapter(compiled):
    z = np.array([[1.0, np.nan, 3.0], [1.0, np.inf, -np.inf], [np.nan] * 3, [0.5, -1.0, 2.0]])
    y = np.array([-100, -100, -100, 2])
    for eps in (0.0, 0.1):
        zt = torch.tensor(z, requires_grad=True)
        GT.gamma_ce(zt, torch.tensor(y), 0.1, ignore_index=-100, label_smoothing=eps, compiled=compiled).backward()
        assert torch.all(zt.grad[:3] == 0) and torch.all(torch.isfinite(zt.grad))
    _check_against_core(z[3:], y[3:], 0.1, ignore_index=-100, compiled=compiled)


def test_an_ignored_row_gets_a_zero_gradient_inside_a_compiled_region():
    @torch.compile(fullgraph=True, backend="aot_eager")  # the user's compile: the adapter traces the core
    def step(z, y):
        return GT.gamma_ce(z, y, 0.1, ignore_index=-100)

    z = torch.tensor([[1.0, np.nan, 3.0], [0.5, -1.0, 2.0]], requires_grad=True)
    step(z, torch.tensor([-100, 2])).backward()
    assert torch.all(z.grad[0] == 0) and torch.all(torch.isfinite(z.grad))


# --------------------------------------------------------------------------- issue 16 item 1: the compile race


BAD = (torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 7, 2]))


def _raises_on_the_bad_target():
    """True: the call raised, naming the row; False: it returned (the race: a NaN row instead of the error)."""
    try:
        GT.gamma_ce(*BAD, 0.3, reduction="none", compiled=False)
    except ValueError as exc:
        return "index (2,)" in str(exc)
    return False


def test_checks_run_while_another_thread_holds_the_compile_flag():
    # torch.compile sets torch.compiler.is_compiling() for the whole process while it compiles
    # (torch.compiler._compile_session_context, entered by every dynamo frame conversion).
    held, done = threading.Event(), threading.Event()

    def compiling():
        with torch.compiler._compile_session_context():
            held.set()
            done.wait(30)

    thread = threading.Thread(target=compiling)
    thread.start()
    try:
        assert held.wait(30) and torch.compiler.is_compiling()
        assert all(_raises_on_the_bad_target() is True for _ in range(20))
        assert _kernel.is_traced(*BAD) is False
    finally:
        done.set()
        thread.join()


def test_checks_run_while_another_thread_really_compiles():
    # Thread A compiles fresh functions (backend="eager": tracing only, quick) for up to 5 s; thread B
    # calls the adapter meanwhile.  Every call must raise; some must overlap a compilation.
    stop, overlapped = threading.Event(), []

    def compiling():
        deadline = time.monotonic() + 5.0
        i = 0
        while time.monotonic() < deadline and not stop.is_set():
            ns = {}
            exec(f"def f{i}(x):\n" + "".join(f"    x = x * {j} + x.sin()\n" for j in range(30)) + "    return x", ns)
            torch.compile(ns[f"f{i}"], backend="eager")(torch.randn(3))
            i += 1

    thread = threading.Thread(target=compiling)
    thread.start()
    results = []
    try:
        while thread.is_alive():
            overlapped.append(torch.compiler.is_compiling())
            results.append(_raises_on_the_bad_target())
    finally:
        stop.set()
        thread.join()
    assert all(results) and len(results) > 0
    if not any(overlapped):
        pytest.skip("no call overlapped a compilation this time (the deterministic test above still ran)")


def test_is_traced_sees_fake_tensors_and_vmap():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.zeros(2, 3))
    assert _kernel.is_traced(fake) and not _kernel.is_traced(torch.zeros(2, 3))
    seen = []
    torch.func.vmap(lambda t: seen.append(_kernel.is_traced(t)) or t)(torch.zeros(2, 3))
    assert seen == [True]


# --------------------------------------------------------------------------- issue 16 item 4: out of memory


def _cpu_allocator_error():
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    pytest.skip("this machine allocated 2**62 bytes")


@pytest.mark.parametrize("error", ["cpu", "cuda", "python"])
def test_out_of_memory_is_re_raised_and_does_not_turn_compilation_off(monkeypatch, error):
    exc = {"cpu": _cpu_allocator_error, "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory."),
           "python": lambda: MemoryError()}[error]()

    def oom(*args):
        raise exc

    monkeypatch.setattr(_kernel, "_compiled_kernel", lambda: oom)
    monkeypatch.setattr(_kernel, "_compile_error", [])
    with pytest.raises(type(exc)):
        GT.gamma_ce(torch.zeros(2, 3), torch.tensor([0, 1]), 0.3)
    assert _kernel._compile_error == []  # the next call compiles as before
    assert _kernel.out_of_memory(exc) and not _kernel.out_of_memory(RuntimeError("no C++ compiler found"))


# --------------------------------------------------------------------------- issue 16 item 3 (documented)


def test_the_core_under_autograd_is_the_analytic_gradient_as_the_readme_says():
    # The core's logits functions on a tensor autograd follows run through the adapter's rules (issue 15:
    # docs/transformations.md): autograd through them is the analytic gradient, TaiLr's W held constant,
    # not the derivative of their arithmetic (which would differentiate W). README.md says so.
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    assert "run through\nthe adapters' rules: the **analytic** first and second derivatives" in readme
    z = np.array([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]])
    y = np.array([0, 2])
    analytic = G.tailr_grad(z, y, 0.3, 0.1)
    through_core = torch.tensor(z, requires_grad=True)
    G.tailr(through_core, torch.tensor(y), 0.3, 0.1).backward()
    adapter = torch.tensor(z, requires_grad=True)
    GT.tailr(adapter, torch.tensor(y), 0.3, 0.1, compiled=False).backward()
    np.testing.assert_allclose(adapter.grad.numpy(), analytic, rtol=1e-14)
    np.testing.assert_allclose(through_core.grad.numpy(), analytic, rtol=1e-14)
    # the derivative of the arithmetic, W differentiated, is far from it
    zt = torch.tensor(z, requires_grad=True)
    logp = torch.log_softmax(zt, -1)[torch.arange(2), torch.tensor(y)]
    w = (logp.exp() / (0.3 + 0.7 * logp.exp())).clamp(0.1, 1.0)
    (-(w * logp).mean()).backward()
    assert np.abs(zt.grad.numpy() - analytic).max() > 0.1 * np.abs(analytic).max()
