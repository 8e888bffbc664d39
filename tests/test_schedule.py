import math

import pytest

from gammace_ref import gamma_schedule


def test_linear_with_warmup():
    s = gamma_schedule(0.0, 0.8, total_steps=100, warmup_steps=20)
    assert [s(i) for i in (-5, 0, 20, 60, 100, 500)] == [0.0, 0.0, 0.0, pytest.approx(0.4), 0.8, 0.8]


def test_cosine_is_flat_at_both_ends_and_monotone():
    s = gamma_schedule(0.0, 1.0, total_steps=1000, kind="cosine")
    vals = [s(i) for i in range(0, 1001, 10)]
    assert vals[0] == 0.0 and vals[-1] == 1.0 and s(500) == pytest.approx(0.5)
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert s(1) < 1e-5  # flat start
    assert 1.0 - s(999) < 1e-5


def test_decreasing_and_constant():
    s = gamma_schedule(0.9, 0.1, total_steps=10)
    assert s(5) == pytest.approx(0.5)
    assert gamma_schedule(0.3, 0.9, total_steps=10, kind="constant")(7) == 0.3


@pytest.mark.parametrize("kw, exc, match", [
    (dict(start=-0.1), ValueError, r"start must be in \[0, 1\], got -0.1"),
    (dict(end=math.nan), ValueError, "end must be in"),
    (dict(total_steps=0), ValueError, "total_steps must be > 0, got 0"),
    (dict(total_steps=1.5), TypeError, "total_steps must be an int, got float"),
    (dict(warmup_steps=200), ValueError, r"warmup_steps must be in \[0, total_steps=100\], got 200"),
    (dict(kind="exp"), ValueError, "kind must be one of"),
])
def test_bad_arguments(kw, exc, match):
    args = dict(start=0.0, end=1.0, total_steps=100) | kw
    with pytest.raises(exc, match=match):
        gamma_schedule(args.pop("start"), args.pop("end"), **args)


def test_bad_step():
    with pytest.raises(TypeError, match="step must be an int, got float"):
        gamma_schedule(total_steps=10)(1.5)


STEPS = (-5, 0, 10, 33, 55, 99, 100, 1000)


def _schedules():
    kinds = ("linear", "cosine", "constant")
    return [gamma_schedule(0.1, 0.9, total_steps=100, warmup_steps=10, kind=k) for k in kinds]


def test_array_steps_of_numpy():
    np = pytest.importorskip("numpy")
    for s in _schedules():
        for t in STEPS:
            got = s(np.asarray(t))
            assert got.dtype == np.float64 and float(got) == pytest.approx(s(t), abs=2e-16)


def test_traced_jax_steps():
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    import jax.numpy as jnp

    for s in _schedules():
        f = jax.jit(s)
        for t in STEPS:
            got = f(jnp.asarray(t))
            assert isinstance(got, jax.Array) and got.shape == ()
            assert float(got) == pytest.approx(s(t), abs=1e-6)  # (JAX's default float32)


@pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")
def test_torch_steps_eager_and_compiled():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import gammace_ref.torch as GT

    for s in _schedules():
        f = torch.compile(s, fullgraph=True)
        for t in STEPS:
            for got in (s(torch.tensor(t)), f(torch.tensor(t))):
                assert isinstance(got, torch.Tensor) and got.shape == ()
                assert float(got) == pytest.approx(s(t), abs=1e-6)  # (torch's default float32)
    # the scheduled γ inside a compiled step: traced, no recompilation per step, as the host value
    s = _schedules()[0]
    z, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 5, (6,))
    step = torch.compile(lambda z, y, t: GT.gamma_ce(z, y, s(t)), fullgraph=True)
    for t in (20, 50):
        assert float(step(z, y, torch.tensor(t))) == pytest.approx(float(GT.gamma_ce(z, y, s(t))), rel=1e-6)


def test_bad_array_step():
    np = pytest.importorskip("numpy")
    with pytest.raises(ValueError, match=r"step must be an int or a 0-d array, got shape \(2,\)"):
        gamma_schedule(total_steps=10)(np.arange(2))
