"""Language-model scale on CPU: the fused hidden-states path (token and vocabulary blocks) against F.linear + F.cross_entropy.

    python benchmarks/lm_scale.py --c 32768 131072 --dtypes float32          # N = 8192, H = 2048
    python benchmarks/lm_scale.py --c 262144 --skip-materialised --json out.json

One process per run, candidates side by side: for each vocabulary size C and
dtype, each candidate's first call (after a small call at N = 64 that
compiles its kernels) is its memory measurement and its first timing;
``--repeats`` more rounds time the candidates in turn.  One step is the loss
and ``.backward()`` with respect to ``hidden`` (N × H) and ``weight``
(C × H), γ = 0.1 for the fused path (the cost does not depend on γ).

Candidates:

* ``materialised``: ``F.cross_entropy(F.linear(h, W).float(), y).backward()``
  -- the logits, their float32 copy in bfloat16 (as transformers' causal-LM
  loss upcasts them), the log-softmax and its gradient all N × C;
* ``fused``: ``gammace_ref.torch.linear_gamma_ce(h, W, y, 0.1).backward()``
  with the default budget (256 MiB of chunk temporaries: token blocks of whole
  rows while a row fits);
* ``fused, vocab blocks``: the same with ``chunk_size=--rows`` and
  ``memory_budget=--budget`` (blocks of ``budget / (4 · 4 B · rows)`` classes,
  one more N × C × H product to recompute each block's logits).

Peak extra memory: the process's peak RSS during the step above what was
resident before it (``VmHWM`` reset through ``/proc/self/clear_refs``), the
gradients included; the inputs (``h``, ``W``) are not counted.  The
materialised path's peak at C = 256k in float32 (3 × 8 GiB of N × C arrays)
does not fit a 24 GiB machine: ``--skip-materialised`` leaves it out (or run
it at a smaller ``--n``).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _common import report, rss_peak_extra  # this folder's shared probe and report

import gammace_ref.torch as GT
from gammace_ref import linear

GAMMA = 0.1


def candidates(args, dtype):
    def materialised(h, w, y):
        return F.cross_entropy(F.linear(h, w).float(), y)

    def fused(h, w, y):
        return GT.linear_gamma_ce(h, w, y, GAMMA)

    def blocks(h, w, y):
        return GT.linear_gamma_ce(h, w, y, GAMMA, chunk_size=args.rows, memory_budget=args.budget)

    out = {} if args.skip_materialised else {"materialised: F.linear + F.cross_entropy": materialised}
    out["fused (default budget: token blocks)"] = fused
    if not args.skip_blocks:
        out[f"fused, vocab blocks ({args.rows} rows × {args.budget // (16 * args.rows)} classes)"] = blocks
    return out


def step(fn, h, w, y):
    h.grad = w.grad = None
    fn(h, w, y).backward()
    return h.grad, w.grad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--h", type=int, default=2048)
    p.add_argument("--c", type=int, nargs="+", default=[32768, 131072, 262144])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--rows", type=int, default=1024, help="rows per chunk of the vocab-blocks candidate")
    p.add_argument("--budget", type=int, default=256 * 2**20, help="memory_budget of the vocab-blocks candidate")
    p.add_argument("--repeats", type=int, default=1, help="timed rounds after the measured first call")
    p.add_argument("--skip-materialised", action="store_true")
    p.add_argument("--skip-blocks", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    load = os.getloadavg()
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for c in args.c:
            g = torch.Generator().manual_seed(0)
            h = torch.randn(args.n, args.h, generator=g).to(dtype).requires_grad_()
            w = (torch.randn(c, args.h, generator=g) * args.h ** -0.5).to(dtype).requires_grad_()
            y = torch.randint(0, c, (args.n,), generator=g)
            fns = candidates(args, dtype)
            times, peaks = {k: [] for k in fns}, {}
            for name, fn in fns.items():
                step(fn, h[:64].detach().requires_grad_(), w, y[:64])  # compile, first-call costs
                gc.collect()
                t0 = time.perf_counter()
                peaks[name] = rss_peak_extra(lambda fn=fn, h=h, w=w, y=y: step(fn, h, w, y))
                times[name].append(time.perf_counter() - t0)
                print(f"[{time.strftime('%H:%M:%S')}] C={c} {dtype_name} {name}: {times[name][-1]:.1f} s, "
                      f"peak extra {peaks[name] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
                h.grad = w.grad = None
                gc.collect()
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    step(fn, h, w, y)
                    times[name].append(time.perf_counter() - t0)
                    h.grad = w.grad = None
                    gc.collect()
            base = next(iter(fns))
            logits = args.n * c * 4
            for name in fns:
                med = statistics.median(times[name])
                rows.append(dict(c=c, dtype=dtype_name, candidate=name, median_s=round(med, 2),
                                 time_ratio=round(med / statistics.median(times[base]), 3),
                                 peak_extra_mib=round(peaks[name] / 2**20), peak_vs_logits=round(peaks[name] / logits, 3),
                                 memory_fraction=round(peaks[name] / peaks[base], 3), times=[round(t, 2) for t in times[name]]))
            del h, w, y, fns
            gc.collect()
    print(f"\nN={args.n}, H={args.h}, CPU threads {torch.get_num_threads()}, load average before "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, after {os.getloadavg()[0]:.1f}; "
          f"time: median of {args.repeats + 1} calls\n")
    report(rows, {"C": ("c", "{}"), "dtype": "{}", "candidate": "{}", "median s": ("median_s", "{:.1f}"),
                  "× first": ("time_ratio", "{:.2f}"), "peak extra MiB": ("peak_extra_mib", "{:.0f}"),
                  "÷ N×C float32": ("peak_vs_logits", "{:.2f}"), "× first's memory": ("memory_fraction", "{:.3f}")},
           args.json, args=vars(args), load_before=load, load_after=os.getloadavg(),
           chunk_rows_default={c: linear.chunk_rows(c, 4) for c in args.c})


if __name__ == "__main__":
    main()
