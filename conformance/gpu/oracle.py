"""The oracle on a GPU: what a kernel author brings, judged on CUDA.

    python conformance/gpu/oracle.py --out DIR      # from the repository root

Runs ``check_implementation`` / ``check_linear_implementation`` on the GPU
backends (torch.cuda, CuPy) for: the torch adapter in all four dtypes, the
training semantics (``reduction="mean"``, ``ignore_index=-100``, label
smoothing 0.1) in float32 and bfloat16, the example kernels of
``gammace_ref.conformance.kernels`` (careful bf16 must pass, sloppy bf16 must
fail), the fused linear adapter, and the array-API core on CuPy in float16.
Prints one line per check (expected verdict, verdict, worst ulps, seconds)
and writes every report into one JSON file, ``DIR/oracle.json``.  A backend that is absent
(no GPU) is reported as skipped; the exit status is 1 when a verdict differs
from the expected one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from gammace_ref.testing import check_implementation, check_linear_implementation
from gammace_ref.testing.backends import Backend, availability


def checks():
    """(name, backend, expected verdict, thunk) of every check."""
    import gammace_ref as G
    import gammace_ref.torch as gt
    from gammace_ref.conformance import kernels as K

    training = dict(reduction="mean", ignore_index=-100, label_smoothing=0.1)
    yield ("torch adapter gamma_ce, 4 dtypes", "torch.cuda", True,
           lambda: check_implementation(lambda z, y, g: gt.gamma_ce(z, y, g, reduction="none"),
                                        backend="torch.cuda",
                                        dtypes=("float64", "float32", "bfloat16", "float16")))
    yield ("torch adapter tailr, training semantics", "torch.cuda", True,
           lambda: check_implementation(gt.tailr, loss="tailr", backend="torch.cuda",
                                        dtypes=("float32", "bfloat16"), **training))
    yield ("torch adapter gamma_ce, training semantics", "torch.cuda", True,
           lambda: check_implementation(gt.gamma_ce, backend="torch.cuda",
                                        dtypes=("float32", "bfloat16"), **training))
    yield ("careful bf16 example kernel", "torch.cuda", True,
           lambda: check_implementation(K.careful_gamma_ce, backend="torch.cuda", dtypes=("bfloat16", "float16")))
    yield ("sloppy bf16 example kernel (computes in bf16)", "torch.cuda", False,
           lambda: check_implementation(K.sloppy_bf16, backend="torch.cuda", dtypes=("bfloat16",)))
    yield ("torch adapter linear_gamma_ce (fused linear)", "torch.cuda", True,
           lambda: check_linear_implementation(
               lambda h, w, y, g: gt.linear_gamma_ce(h, w, y, g, reduction="none"), backend="torch.cuda",
                                               dtypes=("float32", "bfloat16")))
    yield ("example fused linear with dW twice", "torch.cuda", False,
           lambda: check_linear_implementation(K.fused_linear_dw_twice, backend="torch.cuda", bias=True,
                                               dtypes=("float32",)))
    yield ("array-API core on CuPy (float16, float32)", "cupy", True,
           lambda: check_implementation(lambda z, y, g: G.gamma_ce(z, y, g, reduction="none"), backend="cupy",
                                        grad=lambda z, y, g: G.gamma_ce_value_and_grad(z, y, g,
                                                                                       reduction="none")[1],
                                        dtypes=("float16", "float32")))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu-out", help="folder for the JSON reports")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    wrong, summary = 0, []
    for name, backend, expected, thunk in checks():
        reason = availability(Backend(backend))
        if reason:
            print(f"skip  {name} [{backend}]: {reason}", flush=True)
            summary.append(dict(name=name, backend=backend, skipped=reason))
            continue
        t0 = time.perf_counter()
        try:
            report = thunk()
        except Exception as e:  # a crash is a wrong verdict, reported, and the run goes on
            print(f"ERROR {name} [{backend}]: {type(e).__name__}: {e}", flush=True)
            summary.append(dict(name=name, backend=backend, error=f"{type(e).__name__}: {e}"))
            wrong += 1
            continue
        seconds = time.perf_counter() - t0
        ok = report.passed == expected
        wrong += not ok
        print(f"{'ok   ' if ok else 'WRONG'} {name} [{backend}]: passed={report.passed} "
              f"(expected {expected}), {seconds:.1f} s", flush=True)
        if not ok or not report.passed:
            print("      " + str(report).replace("\n", "\n      "), flush=True)
        summary.append(dict(name=name, backend=backend, expected=expected, passed=report.passed,
                            seconds=round(seconds, 2), report=report.to_dict()))
        with open(os.path.join(args.out, "oracle.json"), "w") as f:  # after each check: a timeout keeps the rest
            json.dump(summary, f, indent=1)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
