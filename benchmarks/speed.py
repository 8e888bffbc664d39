"""Speed and memory of gammace_ref against each framework's native cross-entropy.

    python benchmarks/speed.py                       # every backend installed here
    python benchmarks/speed.py --only torch --shapes 4096x32000 --json out.json
    python benchmarks/speed.py --only torch-cuda --shapes 8192x128256 --dtype bfloat16

``--dtype`` (float32, bfloat16, float16) is the logits' dtype on torch and JAX
(NumPy and CuPy stay float32).  On CUDA the torch group also times a device
copy of the logits (``clone``: read once, write once, the bytes a loss-and-
gradient pass must move at least) and gives each candidate's fraction of
that bandwidth floor.

For each shape (default N×C = 4096×32000 and 1024×128000, float32 logits) and
backend, the candidates and their baseline run side by side in this one
process: each is warmed up, then the candidates of a group are timed in turn,
``--repeats`` rounds (alternating, so drift hits all alike), and the table
gives the medians and the ratio to the group's baseline.  Device work is
synchronised before the clock stops (CUDA synchronize, ``block_until_ready``).

Memory: the peak extra bytes of one call beyond what was allocated before it,
as a multiple of the logits' bytes, the returned gradient included.  NumPy
and torch on CPU: the process's peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs``; Linux only); torch on CUDA:
``torch.cuda.max_memory_allocated``; JAX: XLA's memory analysis of the
compiled program (temporaries + outputs), since XLA pools its buffers.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time

import numpy as np
from _common import report, rss_peak_extra  # this folder's shared probe and report

import gammace_ref as G
from gammace_ref.testing.backends import Backend, availability

GAMMA, THRESHOLD = 0.1, 0.2
FLOOR = "device copy of the logits (bandwidth floor)"
GOALS = {  # ratio to the group's baseline that issue 4 asks for
    "torch adapter, loss.backward() (default: compiled core)": 0.6,
    "torch eager gamma_ce_value_and_grad": 1.5,
    "jax.jit(gamma_ce_value_and_grad)": 1.0,
    "jax.grad through gammace_ref.jax.gamma_ce (jit)": 1.0,
    "numpy gamma_ce_value_and_grad": 4.0,
}


# --------------------------------------------------------------------------- memory probes
def _cuda_peak_extra(torch, fn):
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return peak - before


# --------------------------------------------------------------------------- timing
def _time_group(fns, sync, repeats, warmup):
    for fn in fns.values():
        for _ in range(warmup):
            sync(fn())
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            sync(fn())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# --------------------------------------------------------------------------- groups
def _numpy_group(z, y, dtype=None):
    zn, yn = z, y
    return "numpy", "np.exp(logits)", {
        "np.exp(logits)": lambda: np.exp(zn),
        "numpy gamma_ce_value_and_grad": lambda: G.gamma_ce_value_and_grad(zn, yn, GAMMA),
    }, (lambda out: out), rss_peak_extra


def _cupy_group(z, y, dtype=None):
    import cupy as cp

    zc, yc = cp.asarray(z), cp.asarray(y)
    sync = lambda out: cp.cuda.Device().synchronize()  # noqa: E731
    return "cupy", "cp.exp(logits)", {
        "cp.exp(logits)": lambda: cp.exp(zc),
        "cupy gamma_ce_value_and_grad": lambda: G.gamma_ce_value_and_grad(zc, yc, GAMMA),
    }, sync, None


def _torch_group(z, y, device, dtype="float32"):
    import torch
    import torch.nn.functional as F

    import gammace_ref.torch as gt

    zt = torch.from_numpy(z).to(device, getattr(torch, dtype)).requires_grad_()
    yt = torch.from_numpy(y).to(device)

    def backward(loss_fn):
        def run():
            zt.grad = None
            loss_fn(zt, yt).backward()
            return zt.grad
        return run

    fns = {
        "F.cross_entropy, loss.backward()": backward(F.cross_entropy),
        "torch adapter, loss.backward() (default: compiled core)": backward(
            lambda a, b: gt.gamma_ce(a, b, GAMMA)),
        "torch adapter tailr, loss.backward() (compiled)": backward(lambda a, b: gt.tailr(a, b, GAMMA, THRESHOLD)),
        "torch adapter, loss.backward() (compiled=False)": backward(
            lambda a, b: gt.gamma_ce(a, b, GAMMA, compiled=False)),
        "torch eager gamma_ce_value_and_grad": lambda: G.gamma_ce_value_and_grad(zt.detach(), yt, GAMMA),
    }
    cuda = device != "cpu"
    if cuda:  # the bandwidth floor: read the logits once, write a gradient once
        fns[FLOOR] = lambda: zt.detach().clone()
    sync = (lambda out: torch.cuda.synchronize()) if cuda else (lambda out: None)
    probe = (lambda fn: _cuda_peak_extra(torch, fn)) if cuda else rss_peak_extra

    def mem(fn):
        zt.grad = None  # measure from no gradient held (the call allocates it)
        return probe(fn)
    return f"torch ({device})", "F.cross_entropy, loss.backward()", fns, sync, mem


def _jax_group(z, y, dtype="float32"):
    import jax
    import jax.numpy as jnp
    import optax

    import gammace_ref.jax as gj

    zj, yj = jnp.asarray(z, dtype=getattr(jnp, dtype)), jnp.asarray(y)
    native = jax.jit(jax.value_and_grad(
        lambda a: optax.softmax_cross_entropy_with_integer_labels(a, yj).mean()))
    core = jax.jit(lambda a: G.gamma_ce_value_and_grad(a, yj, GAMMA))
    adapter = jax.jit(jax.value_and_grad(lambda a: gj.gamma_ce(a, yj, GAMMA)))
    fns = {
        "jax.value_and_grad(optax CE) (jit)": lambda: native(zj),
        "jax.jit(gamma_ce_value_and_grad)": lambda: core(zj),
        "jax.grad through gammace_ref.jax.gamma_ce (jit)": lambda: adapter(zj),
    }
    # XLA pools its buffers (RSS does not show them): its own accounting of the
    # compiled program, temporaries plus outputs, is the peak extra.
    analysis = {fns[k]: f.lower(zj).compile().memory_analysis() for k, f in zip(fns, (native, core, adapter))}

    def mem(fn):
        a = analysis[fn]
        return None if a is None else a.temp_size_in_bytes + a.output_size_in_bytes

    return f"jax ({jax.default_backend()})", "jax.value_and_grad(optax CE) (jit)", fns, \
        (lambda out: jax.block_until_ready(out)), mem


def _groups(only):
    """(key, make) of the groups to run: those asked for (``--only``) whose backend is usable here."""
    groups = {"numpy": (Backend.NUMPY, _numpy_group),
              "torch": (Backend.TORCH, lambda z, y, d: _torch_group(z, y, "cpu", d)),
              "torch-cuda": (Backend.TORCH_CUDA, lambda z, y, d: _torch_group(z, y, "cuda", d)),
              "jax": (Backend.JAX, _jax_group),  # and optax, the baseline
              "cupy": (Backend.CUPY, _cupy_group)}
    return [(key, make) for key, (kind, make) in groups.items()
            if (not only or key in only) and availability(kind) is None
            and (kind is not Backend.JAX or importlib.util.find_spec("optax") is not None)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["4096x32000", "1024x128000"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", nargs="+", help="numpy torch torch-cuda jax cupy (default: all present)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="the logits' dtype on torch and JAX (default float32)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    rows = []
    for shape in args.shapes:
        n, c = map(int, shape.split("x"))
        rng = np.random.default_rng(0)
        z = rng.standard_normal((n, c), dtype=np.float32) * 3
        y = rng.integers(0, c, size=n)
        for key, make in _groups(args.only):
            backend, base, fns, sync, mem = make(z, y, args.dtype)
            print(f"[{time.strftime('%H:%M:%S')}] {shape} {backend}: warming up", file=sys.stderr, flush=True)
            med = _time_group(fns, sync, args.repeats, warmup=2)
            for name, t in med.items():
                extra = None
                if mem is not None and not args.no_memory:
                    extra = mem(fns[name])
                rows.append(dict(shape=shape, dtype=args.dtype, backend=backend, candidate=name, baseline=base,
                                 median_ms=round(t * 1e3, 2), ratio=round(t / med[base], 3),
                                 of_floor=round(med[FLOOR] / t, 3) if FLOOR in med else None,
                                 goal=GOALS.get(name),
                                 peak_extra_x_logits=None if extra is None else round(extra / z.nbytes, 2)))
            del fns
            gc.collect()

    print()
    report(rows, {"shape": "{}", "backend": "{}", "candidate": "{}", "median ms": ("median_ms", "{:.1f}"),
                  "× baseline": ("ratio", "{:.2f}"), "goal": ("goal", "≤ {}"),
                  "of bandwidth floor": ("of_floor", "{:.0%}"),
                  "peak extra / logits bytes": ("peak_extra_x_logits", "{:.2f}")},
           args.json, repeats=args.repeats, dtype=args.dtype)


if __name__ == "__main__":
    main()
