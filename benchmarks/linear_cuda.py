"""The hidden-states path on a CUDA GPU: gammace_ref.torch.linear_gamma_ce against F.linear + F.cross_entropy.

    python benchmarks/linear_cuda.py                          # N = 8192, H = 4096, C = 128256, bfloat16
    python benchmarks/linear_cuda.py --n 4096 --json out.json
    python benchmarks/linear_cuda.py --autocast          # float32 inputs under torch.autocast(bfloat16)

One step is the loss and ``.backward()`` with respect to ``hidden`` (N × H)
and ``weight`` (C × H).  Candidates, side by side in this process (warmed up,
then ``--repeats`` alternating rounds, medians):

* ``materialised``: ``F.cross_entropy(F.linear(h, W).float(), y)`` -- the
  N × C logits, their float32 copy (as transformers' causal-LM loss
  upcasts them) and the gradient of each;
* ``fused``: ``gammace_ref.torch.linear_gamma_ce(h, W, y, 0.0)`` (chunks of
  the default memory budget; γ = 0, so both losses are the same
  cross-entropy: the table's last column checks that they agree).

``--autocast``: ``hidden`` and ``weight`` are float32 (master weights) and
both candidates run under ``torch.autocast("cuda", --dtype)``, as a
``Trainer(bf16=True)`` step does.

Peak extra memory: ``torch.cuda.max_memory_allocated`` during one step above
what was allocated before it (inputs not counted, gradients included).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from _common import report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--h", type=int, default=4096)
    p.add_argument("--c", type=int, default=128256)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--autocast", action="store_true", help="float32 inputs under torch.autocast(--dtype)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    import gammace_ref.torch as gt

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        return 0
    dt = torch.float32 if args.autocast else getattr(torch, args.dtype)
    autocast = torch.autocast("cuda", dtype=getattr(torch, args.dtype), enabled=args.autocast)
    g = torch.Generator(device="cuda").manual_seed(0)
    h = (torch.randn(args.n, args.h, device="cuda", generator=g) / args.h ** 0.5).to(dt).requires_grad_()
    w = torch.randn(args.c, args.h, device="cuda", generator=g).to(dt).requires_grad_()
    y = torch.randint(0, args.c, (args.n,), device="cuda", generator=g)

    def step(loss_fn):
        def run():
            h.grad = w.grad = None
            with autocast:
                loss = loss_fn()
            loss.backward()
            return loss.detach()
        return run

    fns = {"materialised: F.cross_entropy(F.linear(h, W).float(), y)":
           step(lambda: F.cross_entropy(F.linear(h, w).float(), y)),
           "fused: gammace_ref.torch.linear_gamma_ce(h, W, y, 0.0)":
           step(lambda: gt.linear_gamma_ce(h, w, y, 0.0))}
    base = next(iter(fns))
    peaks, times, losses = {}, {k: [] for k in fns}, {}
    for k, fn in fns.items():  # warm-up (compilation) and the memory measurement
        fn()
        torch.cuda.synchronize()
        h.grad = w.grad = None
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        losses[k] = float(fn())
        torch.cuda.synchronize()
        peaks[k] = torch.cuda.max_memory_allocated() - before
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(args.repeats):
        for k, fn in fns.items():
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times[k].append(start.elapsed_time(stop))
    med = {k: statistics.median(v) for k, v in times.items()}
    label = f"{args.dtype} autocast" if args.autocast else args.dtype
    rows = [dict(shape=f"N={args.n} H={args.h} C={args.c}", dtype=label, candidate=k,
                 median_ms=round(med[k], 2), ratio=round(med[k] / med[base], 3),
                 peak_extra_gib=round(peaks[k] / 2**30, 3), loss=losses[k]) for k in fns]
    report(rows, {"shape": "{}", "dtype": "{}", "candidate": "{}", "median ms": ("median_ms", "{:.1f}"),
                  "× materialised": ("ratio", "{:.2f}"), "peak extra GiB": ("peak_extra_gib", "{:.2f}"),
                  "loss": ("loss", "{:.6f}")},
           args.json, repeats=args.repeats, autocast=args.autocast)
    return 0


if __name__ == "__main__":
    sys.exit(main())
