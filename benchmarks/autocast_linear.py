"""The hidden-states path under ``torch.autocast`` (CPU, bfloat16) against float32: issue 20, item 1.

    python benchmarks/autocast_linear.py          # N = 4096, H = 128, C = 32000, γ = 0.1

The loss and the gradients with respect to ``hidden`` and ``weight`` of
``gammace_ref.torch.linear_gamma_ce`` and of the materialised path
(``gammace_ref.torch.gamma_ce(F.linear(h, W))``) under the same autocast,
against the float32 result of the hidden-states path: the absolute error of
the loss and the relative (Frobenius) error of each gradient.  The hidden
states are informative (``h = 0.76·√H·W[y] + noise``: a loss of a few nats,
as in a trained model).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import gammace_ref.torch as GT


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--h", type=int, default=128)
    p.add_argument("--c", type=int, default=32000)
    p.add_argument("--gamma", type=float, default=0.1)
    args = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(args.c, args.h, generator=g) * args.h ** -0.5
    y = torch.randint(0, args.c, (args.n,), generator=g)
    h = 0.76 * args.h ** 0.5 * w[y] + torch.randn(args.n, args.h, generator=g)

    def run(fn, autocast):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = fn(hh, ww)
        loss.backward()
        return loss.detach(), hh.grad.double(), ww.grad.double()

    fused = lambda a, b: GT.linear_gamma_ce(a, b, y, args.gamma)
    dense = lambda a, b: GT.gamma_ce(F.linear(a, b), y, args.gamma)
    ref = run(fused, False)
    print(f"N={args.n}, H={args.h}, C={args.c}, γ={args.gamma}; float32 loss {float(ref[0]):.7f}")
    for name, fn in (("hidden-states path (linear_gamma_ce)", fused), ("materialised (F.linear, then gamma_ce)", dense)):
        loss, gh, gw = run(fn, True)
        rel = lambda a, b: float((a - b).norm() / b.norm())
        print(f"autocast bf16, {name}: loss {float(loss):.7f} ({loss.dtype}), |Δloss| {abs(float(loss - ref[0])):.2e}, "
              f"grad hidden {rel(gh, ref[1]):.1e}, grad weight {rel(gw, ref[2]):.1e}")


if __name__ == "__main__":
    main()
