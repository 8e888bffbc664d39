"""γ-CE from hidden states: gammace_ref.linear (chunked) against materialising the N×C logits.

    python benchmarks/linear.py                          # N=16384, C=32000, H=1024, float32
    python benchmarks/linear.py --n 2048 --only numpy --repeats 5

One process, side by side: per group, each candidate's first call is its
warm-up and its memory measurement; then ``--repeats`` rounds time the
candidates in turn (alternating, so drift hits all alike) and the table
gives the medians and the ratios to the group's baseline.

Groups (every step computes the loss and the gradients with respect to
``hidden`` and ``weight``; no bias):

* numpy: ``gammace_ref.linear.gamma_ce_value_and_grad`` (default 256 MiB
  budget) against ``hidden @ weight.T``, the core's
  ``gamma_ce_value_and_grad`` and the two gradient products;
* torch (CPU): ``gammace_ref.torch.linear_gamma_ce(...).backward()`` against
  ``F.cross_entropy(F.linear(hidden, weight), targets).backward()``;
* jax: ``jax.jit(jax.value_and_grad(...))`` of
  ``gammace_ref.jax.linear_gamma_ce`` against that of optax's
  ``softmax_cross_entropy_with_integer_labels`` on the dense logits.

Memory: the peak extra bytes of one step beyond those allocated before it,
outputs (the gradients) included.  NumPy and torch on CPU: the process's
peak RSS (``VmHWM`` reset through ``/proc/self/clear_refs``, as in
benchmarks/speed.py); JAX: XLA's memory analysis of the compiled program
(temporaries + outputs), since XLA pools its buffers.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import numpy as np
from _common import report, rss_peak_extra  # this folder's shared probe and report (with speed.py)

import gammace_ref as G
from gammace_ref import linear

GAMMA = 0.1
GOALS = {"numpy gammace_ref.linear (fused)": (1.2, 8.0)}  # issue 6: time ≤ 1.2×, memory ≥ 8× lower


def _numpy_group(h, w, y, budget):
    def fused():
        return linear.gamma_ce_value_and_grad(h, w, y, GAMMA, memory_budget=budget)

    def dense():
        loss, g = G.gamma_ce_value_and_grad(h @ w.T, y, GAMMA)
        return loss, g @ w, g.T @ h

    return "numpy", {"numpy materialised (h @ W.T, core, 2 products)": dense,
                     "numpy gammace_ref.linear (fused)": fused}, (lambda out: None), \
        (lambda name, fn: rss_peak_extra(fn))


def _torch_group(h, w, y, budget):
    import torch
    import torch.nn.functional as F

    import gammace_ref.torch as gt

    ht = torch.from_numpy(h).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    yt = torch.from_numpy(y)

    def step(loss_fn):
        def run():
            ht.grad = wt.grad = None
            loss_fn().backward()
            return ht.grad, wt.grad
        return run

    fns = {
        "torch F.linear + F.cross_entropy, autograd": step(lambda: F.cross_entropy(F.linear(ht, wt), yt)),
        "torch gammace_ref.torch.linear_gamma_ce, backward": step(
            lambda: gt.linear_gamma_ce(ht, wt, yt, GAMMA, memory_budget=budget)),
    }

    def mem(name, fn):
        ht.grad = wt.grad = None
        return rss_peak_extra(fn)
    return f"torch (cpu, {torch.get_num_threads()} threads)", fns, (lambda out: None), mem


def _jax_group(h, w, y, budget):
    import jax
    import jax.numpy as jnp
    import optax

    import gammace_ref.jax as gj

    hj, wj, yj = jnp.asarray(h), jnp.asarray(w), jnp.asarray(y)
    dense = jax.jit(jax.value_and_grad(
        lambda a, b: optax.softmax_cross_entropy_with_integer_labels(a @ b.T, yj).mean(), argnums=(0, 1)))
    fused = jax.jit(jax.value_and_grad(
        lambda a, b: gj.linear_gamma_ce(a, b, yj, GAMMA, memory_budget=budget), argnums=(0, 1)))
    fns = {"jax value_and_grad(dense logits + optax CE) (jit)": lambda: dense(hj, wj),
           "jax value_and_grad(gammace_ref.jax.linear_gamma_ce) (jit)": lambda: fused(hj, wj)}
    compiled = dict(zip(fns, (dense, fused)))

    def mem(name, fn):
        fn()  # warm-up (compilation)
        a = compiled[name].lower(hj, wj).compile().memory_analysis()
        return None if a is None else a.temp_size_in_bytes + a.output_size_in_bytes
    return f"jax ({jax.default_backend()})", fns, (lambda out: jax.block_until_ready(out)), mem


def _run_group(fns, sync, mem, repeats, time_warmup):
    peaks, times = {}, {k: [] for k in fns}
    for name, fn in fns.items():  # warm-up call, measured
        def call(fn=fn):
            out = fn()
            sync(out)
            return out
        t0 = time.perf_counter()
        peaks[name] = mem(name, call)
        if time_warmup:
            times[name].append(time.perf_counter() - t0)
        gc.collect()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            sync(fn())
            times[name].append(time.perf_counter() - t0)
            gc.collect()
    return {k: statistics.median(v) for k, v in times.items()}, peaks


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=16384, help="tokens")
    p.add_argument("--c", type=int, default=32000, help="classes (vocabulary)")
    p.add_argument("--h", type=int, default=1024, help="hidden width")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--time-warmup", action="store_true",
                   help="count the warm-up (memory) call among the timings (no compilation: NumPy, torch)")
    p.add_argument("--budget", type=int, default=None, help="memory_budget in bytes (default: the library's)")
    p.add_argument("--only", nargs="+", default=["numpy", "torch", "jax"], help="numpy torch jax")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    h = rng.standard_normal((args.n, args.h), dtype=np.float32)
    w = rng.standard_normal((args.c, args.h), dtype=np.float32) * np.float32(3 / args.h ** 0.5)
    y = rng.integers(0, args.c, size=args.n)
    rows = []
    makers = {"numpy": _numpy_group, "torch": _torch_group, "jax": _jax_group}
    for key in args.only:
        backend, fns, sync, mem = makers[key](h, w, y, args.budget)
        print(f"[{time.strftime('%H:%M:%S')}] {backend}: warm-up and memory", file=sys.stderr, flush=True)
        med, peaks = _run_group(fns, sync, mem, args.repeats, args.time_warmup and key != "jax")
        base = next(iter(fns))
        for name in fns:
            goal = GOALS.get(name)
            rows.append(dict(backend=backend, candidate=name, baseline=base, median_s=round(med[name], 3),
                             time_ratio=round(med[name] / med[base], 3),
                             peak_extra_mib=None if peaks[name] is None else round(peaks[name] / 2**20, 1),
                             memory_reduction=None if not peaks[name] or peaks[base] is None
                             else round(peaks[base] / peaks[name], 2),
                             goal=None if goal is None else f"time ≤ {goal[0]}×, memory ≥ {goal[1]}× lower"))
            print(f"[{time.strftime('%H:%M:%S')}] {rows[-1]}", file=sys.stderr, flush=True)
        del fns
        gc.collect()

    print(f"\nN={args.n}, C={args.c}, H={args.h}, float32; logits would be {args.n * args.c * 4 / 2**30:.2f} GiB; "
          f"fused chunk = {linear.chunk_rows(args.c, 4, args.budget)} rows; {args.repeats} timed rounds"
          f"{' + the warm-up (numpy, torch)' if args.time_warmup else ''}\n")
    for r in rows:
        r["memory"] = ("(baseline)" if r["candidate"] == r["baseline"] else
                       None if r["memory_reduction"] is None else f"{r['memory_reduction']:.1f}× lower")
    report(rows, {"backend": "{}", "candidate": "{}", "median s": ("median_s", "{:.2f}"),
                  "× baseline time": ("time_ratio", "{:.2f}"), "peak extra MiB": ("peak_extra_mib", "{:.0f}"),
                  "memory ÷": ("memory", "{}"), "goal": "{}"}, args.json, args=vars(args))


if __name__ == "__main__":
    main()
