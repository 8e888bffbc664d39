"""``gammace-ref``: command-line entry point.

``gammace-ref accuracy`` measures the worst relative error of gammace_ref
against 60-digit mpmath on every regime of :mod:`gammace_ref.testing.regimes`,
on every backend installed here, in float32 and float64, and prints the
table (exit status 1 if any entry exceeds its tolerance).

``gammace-ref vectors --out DIR`` regenerates the golden vectors of the
conformance suite (:mod:`gammace_ref.testing.vectors`) into ``DIR``.

``gammace-ref conformance`` runs the conformance suite shipped in the package
(:mod:`gammace_ref.conformance`) on every backend and prints a backend ×
check table (exit status 1 on any failure); ``gammace-ref check
MODULE:FUNCTION`` judges a user's function with
:func:`gammace_ref.testing.check_implementation`.

Building the parser (``gammace-ref --help``, ``--version``, any command's
``--help``) imports nothing beyond the standard library and gammace_ref
itself, so it works on a plain install; a command whose extra is not
installed says which one to install (exit status 2).
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
import time

from . import __version__

# The backends' names, without importing gammace_ref.testing (it needs NumPy): `--help` works on a plain
# install. tests/test_cli.py checks that they are those of gammace_ref.testing.backends.Backend.
BACKENDS = ("numpy", "array_api_strict", "torch", "torch.cuda", "jax", "jax.jit", "cupy", "dask")
Backend = enum.Enum("Backend", [(name, name) for name in BACKENDS])  # the parsers use only `.value`
DTYPES = ("float32", "float64")

# The extra each command needs (pyproject.toml); a missing module that is a backend's library is named
# with that backend's extra instead.
EXTRA = {"accuracy": "oracle", "vectors": "oracle", "check": "oracle", "conformance": "test", "demo": "demo",
         "demo lm": "torch,demo"}
BACKEND_EXTRAS = ("torch", "jax", "cupy", "dask")

DESCRIPTION = {
    "accuracy": "Measure the worst relative error of gammace_ref against 60-digit mpmath (value and every "
                "gradient component) in every regime of the battery, on every backend installed here, in "
                "float32 and float64, and print the table (with --markdown, the table of "
                "docs/accuracy-table.md). Takes minutes: the huge-vocabulary regime has C = --vocab classes.",
    "vectors": "Regenerate the golden vectors of the conformance suite (one JSON file per regime, the loss "
               "and gradient from 60-digit mpmath; the format is documented in gammace_ref.testing.vectors) "
               "into --out. The package ships the same files (gammace_ref/conformance/vectors/). A "
               "directory that is not empty is refused unless --force: then its golden-vector files are "
               "replaced, including any that the generator no longer writes, and other files are kept.",
    "conformance": "Run the conformance suite shipped in the package (golden vectors, every pair of "
                   "backends, finite differences, peers and defining relations, the oracle) under pytest on "
                   "every installed backend, and print a backend × check table. Works from any directory.",
    "check": "Judge your own implementation against the reference on the battery of hard regimes "
             "(gammace_ref.testing.check_implementation).",
    "demo": "The over-confidence demo: CE vs γ-CE vs TaiLr on scikit-learn's digits with symmetric label "
            "noise; accuracy, NLL, ECE and confidence per loss, and two figures, in --out.",
    "demo lm": "The paper's synthetic experiment: MLE vs TaiLr vs γ-CE on a language with a known oracle (a "
               "shaped random LSTM): PPL_oracle, PPL_test, BLEU-4, Self-BLEU-4 and the perturbation curves "
               "per loss, as tables (Markdown, JSON) and three figures in --out. The full setting takes "
               "hours on 2 cores; --quick is a smoke test of a few minutes.",
}
EXIT_STATUS = {
    "accuracy": "0: every entry within its tolerance (1e-12 float64, 2e-5 float32); 1: some entry beyond it; "
                "2: bad arguments or the oracle extra is missing.",
    "vectors": "0: written; 2: --out is a file, not empty (without --force) or not writable, bad arguments, "
               "or the oracle extra is missing.",
    "conformance": "0: every check passed; 1: some check failed; 2-4: the run was interrupted or pytest "
                   "got bad arguments; 5: nothing selected (e.g. -- -k matched no test); pytest's codes. 2 also "
                   "when the test extra is missing.",
    "demo": "0: done; 1: bad option values; 2: bad arguments or the demo extra is missing.",
    "demo lm": "0: done; 1: bad option values; 2: bad arguments, or torch or the demo extra is missing.",
}


def _with_default(action) -> None:
    """Add ``(default: X)`` to an option's help, unless it says its default already or has none."""
    default, text = action.default, action.help or ""
    if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
            or "default" in text
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
        return
    if isinstance(default, (list, tuple)):
        default = " ".join(map(str, default))
    action.help = f"{text} (default: {str(default).replace('%', '%%')})".lstrip()


def _missing_extra(command: str, exc: ModuleNotFoundError) -> str | None:
    """The line saying which extra to install, when ``exc`` is a dependency of ``command``; else None."""
    root = (exc.name or "").split(".")[0]
    known = {"numpy", "mpmath", "array_api_strict", "pytest", "hypothesis", "optax", "sklearn", "matplotlib",
             *BACKEND_EXTRAS}
    if root not in known:
        return None
    extra = root if root in BACKEND_EXTRAS else EXTRA.get(command)
    if extra is None:  # a command without an entry in EXTRA: the error as it is
        return None
    return (f"gammace-ref {command} needs {root}, which is not installed: install the {extra} extra, "
            f"python -m pip install \"gammace_ref[{extra}]\"")


def accuracy_markdown(cells: dict, backends: list, dtypes: list, vocab: int) -> str:
    """The Markdown of ``docs/accuracy-table.md``: one table per dtype, a row per regime/loss, a column
    per backend; ``cells[(regime/loss, backend, dtype)] = (error, within tolerance)``."""
    from .testing import regimes, table

    order = [r.name for r in regimes.regimes("float64", 10)]
    names = sorted({n for n, _, _ in cells}, key=lambda n: (order.index(n.split("/")[0]), n.split("/")[1]))
    out = ["<!-- generated by `gammace-ref accuracy --markdown FILE`: do not edit by hand "
           "(tests/test_generated_docs.py checks that it is current) -->", ""]
    for dtype in dtypes:
        out.append(f"**{dtype}** (tolerance {regimes.TOLERANCE[dtype]:.0e})")
        out.append("")
        rows = [[n] + [f"{err:.1e}" + ("" if ok else " **FAIL**") for err, ok in (cells[(n, b, dtype)]
                                                                                 for b in backends)]
                for n in names]
        out += [table.render(["regime / loss", *backends], rows, markdown=True), ""]
    out.append(f"γ ∈ {{{', '.join(f'{g:g}' for g in regimes.GAMMAS)}}}, TaiLr b = {regimes.TAILR_THRESHOLD}; "
               f"C = {vocab} in huge_vocab.")
    return "\n".join(out) + "\n"


def _accuracy(args) -> int:
    from .testing import backends, regimes, table

    kinds = [backends.Backend(b) for b in args.backends] if args.backends else list(backends.Backend)
    runs, absent = [], {}
    for kind in kinds:
        reason = backends.availability(kind)
        if reason:
            absent[kind.value] = reason
        else:
            runs.append(backends.BackendUnderTest(kind))
    results, cells, failed = {}, {}, False
    start = time.perf_counter()
    for b in runs:
        for dtype in args.dtypes:
            def progress(regime, loss, b=b, dtype=dtype):
                print(f"[{time.perf_counter() - start:6.1f}s] {b!r:17} {dtype} {regime:15} {loss}",
                      file=sys.stderr, flush=True)

            res = regimes.measure(b, dtype, large_c=args.vocab, progress=None if args.quiet else progress)
            for (regime, loss), (ev, eg) in res.items():
                ok = max(ev, eg) <= regimes.TOLERANCE[dtype]
                failed |= not ok
                results[f"{b!r}/{dtype}/{regime}/{loss}"] = {"value": ev, "grad": eg, "ok": ok}
                cells[(f"{regime}/{loss}", repr(b), dtype)] = (max(ev, eg), ok)

    names = [repr(b) for b in runs]
    md = accuracy_markdown(cells, names, args.dtypes, args.vocab)
    print("\nWorst relative error (value, every gradient component) against mpmath, "
          f"γ ∈ {list(regimes.GAMMAS)}, TaiLr b = {regimes.TAILR_THRESHOLD}")
    cols = [(b, d) for b in names for d in args.dtypes]
    labels = [f"{b}/{d}".replace("float", "f").replace("array_api_strict", "strict") for b, d in cols]
    rows = sorted({n for n, _, _ in cells}, key=lambda n: md.index(f"| {n} |"))
    print("tolerance: " + ", ".join(f"{d} {regimes.TOLERANCE[d]:.0e}" for d in args.dtypes))
    print(table.render(["regime/loss", *labels],
                       [[n] + [f"{cells[(n, b, d)][0]:.1e}" + ("" if cells[(n, b, d)][1] else "!")
                               for b, d in cols] for n in rows]))
    for k, reason in absent.items():
        print(f"absent: {k}: {reason}")
    print("FAIL" if failed else "PASS", f"({time.perf_counter() - start:.0f}s)")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tolerance": regimes.TOLERANCE, "gammas": list(regimes.GAMMAS), "results": results,
                       "absent": absent, "passed": not failed}, f, indent=1, sort_keys=True)
    return 1 if failed else 0


def _vectors(args) -> int:
    from .testing import vectors

    start = time.perf_counter()
    try:
        paths = vectors.write(args.out, force=args.force)
    except OSError as exc:  # a file, not empty, not writable: one line, no traceback
        reason = exc.strerror or str(exc)
        print(f"gammace-ref vectors: cannot write {args.out}: {reason}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    print(f"{len(paths)} files, {sum(p.stat().st_size for p in paths)} bytes, "
          f"{time.perf_counter() - start:.1f}s")
    return 0


def _conformance(args) -> int:
    from .testing import conformance_runner

    return conformance_runner.run(args.backends, args.dtypes, args.suite, args.json, args.pytest_args or ())


CHECK_EPILOG = """\
The candidate is called as f(logits, targets, gamma[, threshold]) and returns the
per-example losses; with --reduction, --ignore-index or --label-smoothing it is called
with reduction=..., label_smoothing=... (always) and ignore_index=... (when given) as
keyword arguments.  With --linear: f(hidden, weight, targets, gamma[, threshold]
[, bias=...]) for a fused linear + loss kernel.  Gradients come from the backend's
autodiff (torch, jax, jax.jit) or from --grad.

exit status: 0 every entry passed; 1 a check failed, the candidate accepted none of
the dtypes, or a call timed out; 2 usage error (bad MODULE:FUNCTION, module or function
not found, an invalid option) or the oracle extra is missing.
"""


class _Usage(Exception):
    """A usage error of `gammace-ref check`: one line, exit status 2."""


def _load(spec: str, what: str):
    """The object named by ``MODULE:FUNCTION`` (FUNCTION may be dotted: ``Class.apply``)."""
    import importlib

    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise _Usage(f"{what} must be MODULE:FUNCTION, got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the current directory, as `python -m` does
    try:
        obj = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 -- whatever importing the user's module raises
        raise _Usage(f"cannot import module {module!r} ({what}): {type(exc).__name__}: {exc}") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise _Usage(f"module {module!r} has no attribute {name!r} ({what})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise _Usage(f"{spec} is a {type(obj).__name__}, not callable ({what})")
    return obj


def _check(args) -> int:
    from .testing import oracle, oracle_linear

    try:
        candidate = _load(args.target, "the candidate")
        grad = _load(args.grad, "--grad") if args.grad else None
        kwargs = dict(loss=args.loss, backend=args.backend, grad=grad, dtypes=tuple(args.dtypes),
                      gammas=tuple(args.gammas), threshold=args.threshold, reduction=args.reduction,
                      ignore_index=args.ignore_index, label_smoothing=args.label_smoothing, profile=args.profile,
                      timeout=args.timeout or None, static_gamma=True if args.static_gamma else None,
                      cases=tuple(args.cases) if args.cases else None)
        if args.linear:
            if args.order != 1 or args.hvp:
                raise _Usage("--order 2 and --hvp go with a logits candidate, not --linear")
            report = oracle_linear.check_linear_implementation(candidate, bias=args.bias, large=args.large, **kwargs)
        else:
            if args.bias or args.large:
                raise _Usage("--bias and --large go with --linear")
            hvp = _load(args.hvp, "--hvp") if args.hvp else None
            report = oracle.check_implementation(candidate, order=args.order, hvp=hvp, **kwargs)
    except _Usage as exc:
        print(f"gammace-ref check: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError) as exc:  # the oracle's checks of the options; no backend
        print(f"gammace-ref check: {exc}", file=sys.stderr)
        return 2
    if args.json == "-":
        json.dump(report.to_dict(), sys.stdout, indent=1, sort_keys=True, allow_nan=False)
        print()
    else:
        print(report)
        print(f"({report.seconds:.1f}s)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report.to_dict(), f, indent=1, sort_keys=True, allow_nan=False)
                f.write("\n")
    return 0 if report.passed else 1


def _add_check(sub, backends):
    try:  # the defaults of the oracle; without its extra (numpy, mpmath) `check` itself says what to install
        from .testing.regimes import GAMMAS, TAILR_THRESHOLD
    except ImportError:
        GAMMAS, TAILR_THRESHOLD = None, None
    chk = sub.add_parser("check", help="judge your implementation against the reference (check_implementation)",
                         description="Judge an implementation of γ-CE / TaiLr (or a fused linear + loss kernel) "
                                     "against the 60-digit mpmath reference on the hard regimes.",
                         epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    chk.add_argument("target", help="MODULE:FUNCTION of the candidate (imported from the current directory; "
                                    "FUNCTION may be dotted, e.g. mymod:MyLoss.apply)")
    chk.add_argument("--linear", action="store_true",
                     help="the candidate is a fused linear + loss kernel f(hidden, weight, targets, gamma, ...) "
                          "(check_linear_implementation)")
    chk.add_argument("--loss", default="gamma_ce", choices=["gamma_ce", "tailr"], help="default: %(default)s")
    chk.add_argument("--backend", default="numpy", choices=backends, help="default: %(default)s")
    chk.add_argument("--grad", help="MODULE:FUNCTION giving the gradient(s), called like the candidate "
                                    "(needed where the backend has no autodiff; default: autodiff or none)")
    chk.add_argument("--dtypes", nargs="+", default=["float64", "float32"],
                     choices=["float64", "float32", "bfloat16", "float16"], help="default: %(default)s")
    chk.add_argument("--gammas", nargs="+", type=float, default=None if GAMMAS is None else list(GAMMAS),
                     help="the γ values (default: %(default)s)")
    chk.add_argument("--threshold", type=float, default=TAILR_THRESHOLD,
                     help="TaiLr's b, with --loss tailr (default: %(default)s)")
    chk.add_argument("--reduction", choices=["none", "mean", "sum"],
                     help="passed as reduction=... (default: not passed; per-example losses expected)")
    chk.add_argument("--ignore-index", type=int,
                     help="passed as ignore_index=...; adds ignored rows and an all-ignored batch (default: none)")
    chk.add_argument("--label-smoothing", type=float,
                     help="passed as label_smoothing=... (default: not passed)")
    chk.add_argument("--profile", default="reference", choices=["reference", "kernel"],
                     help="reference: every gradient component to the tolerance; kernel: per-row norm-wise "
                          "(what a float32-compute kernel can promise); default: %(default)s")
    chk.add_argument("--order", type=int, default=1, choices=[1, 2],
                     help="2: also judge Hessian-vector products (torch double backward, jax.jvp of the "
                          "gradient, or --hvp); default: %(default)s")
    chk.add_argument("--hvp", help="MODULE:FUNCTION giving the Hessian-vector product, called like the candidate "
                                   "with the direction v after γ (and b) (with --order 2 where the backend has "
                                   "no autodiff)")
    chk.add_argument("--cases", nargs="+", help="only these cases of the battery, by name (default: all)")
    chk.add_argument("--bias", action="store_true", help="with --linear: pass bias=... and check its gradient")
    chk.add_argument("--large", action="store_true", help="with --linear: add the C = 128257 case (slow)")
    chk.add_argument("--static-gamma", action="store_true",
                     help="under jax.jit pass γ as a static argument (default: traced, static if it must)")
    chk.add_argument("--timeout", type=float, default=300.0,
                     help="seconds allowed per call of the candidate; 0: no limit (default: %(default)s)")
    chk.add_argument("--json", help="also write the report as JSON to this file ('-': print the JSON instead "
                                    "of the table)")
    return chk


def _demo(args) -> int:
    if args.which == "lm":
        return _demo_lm(args)
    from . import demo

    try:
        result = demo.run(noise=args.noise, seeds=args.seeds, seed=args.seed, epochs=args.epochs, out=args.out,
                          progress=None if args.quiet else sys.stderr)
    except ValueError as exc:
        raise SystemExit(f"gammace-ref demo: {exc}")
    return _demo_printed(result)


def _demo_printed(result) -> int:
    """Print a demo's table, the files it wrote and its run time (the digits and the LM demo alike)."""
    print(result.table)
    for path in result.files:
        print(f"wrote {path}")
    print(f"{len(result.runs)} runs, {result.seconds:.0f}s")
    return 0


def _demo_lm(args) -> int:
    from . import demo_lm

    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    try:
        demo_lm._check_device(args.device)
    except ValueError as exc:  # "device must be ...": the option's name
        raise SystemExit(f"gammace-ref demo lm: --{exc}")
    try:
        result = demo_lm.run(demo_lm.QUICK if args.quick else demo_lm.FULL, seeds=seeds, seed=args.seed,
                             out=args.out, progress=None if args.quiet else sys.stderr, device=args.device)
    except ValueError as exc:
        raise SystemExit(f"gammace-ref demo lm: {exc}")
    return _demo_printed(result)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (standard library only: it works on a plain install)."""
    parser = argparse.ArgumentParser(
        prog="gammace-ref",
        description="The reference implementation and correctness oracle of the γ-cross-entropy (TaiLr) "
                    "loss: measure its accuracy, run the conformance suite, judge your implementation, "
                    "regenerate the golden vectors, run the demo. `gammace-ref COMMAND --help` describes "
                    "each command, its options and its exit status.",
        epilog="Each command needs an extra of the package (pip install \"gammace_ref[EXTRA]\"): "
               + ", ".join(f"{c}: {e}" for c, e in EXTRA.items()) + "; without it the command says so and "
               "exits with status 2.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    acc = sub.add_parser("accuracy", help="worst relative error vs mpmath per regime, backend and dtype")
    acc.add_argument("--backends", nargs="+", choices=BACKENDS, help="default: all installed")
    acc.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    acc.add_argument("--vocab", type=int, default=100_000, help="C of the huge-vocabulary regime")
    acc.add_argument("--json", help="also write the results to this JSON file")
    acc.add_argument("--markdown", help="also write the tables to this Markdown file (docs/accuracy-table.md)")
    acc.add_argument("--quiet", action="store_true", help="no progress lines")
    vec = sub.add_parser("vectors", help="regenerate the golden vectors (mpmath) of the conformance suite")
    vec.add_argument("--out", required=True, help="directory to write (created if needed)")
    vec.add_argument("--force", action="store_true",
                     help="replace the golden-vector files of a directory that is not empty")
    con = sub.add_parser("conformance", help="the conformance suite on every backend: a backend × check table")
    con.add_argument("--backends", nargs="+", choices=BACKENDS, help="default: all installed")
    con.add_argument("--dtypes", "--dtype", nargs="+", choices=DTYPES, help="default: both")
    con.add_argument("--json", help="also write the report (no timings: stable to diff) to this file")
    con.add_argument("--suite", help="a copy of the suite's directory to run instead "
                                     "(default: the one shipped in the package)")
    con.add_argument("pytest_args", nargs="*", help="after --: passed to pytest (e.g. -- -x -k vectors)")
    _add_check(sub, [b.value for b in Backend])
    dem = sub.add_parser("demo", help="over-confidence demo: CE vs γ-CE vs TaiLr on digits with noisy labels "
                                      "(needs the demo extra)")
    dem.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.2, 0.4],
                     help="symmetric label-noise rates of the training labels (default: %(default)s)")
    dem.add_argument("--seeds", type=int, default=3, help="number of seeds (default: %(default)s)")
    dem.add_argument("--seed", type=int, default=0, help="first seed (default: %(default)s)")
    dem.add_argument("--epochs", type=int, default=60, help="training epochs (default: %(default)s)")
    dem.add_argument("--out", default="demo-out", help="directory for the table and figures (default: %(default)s)")
    dem.add_argument("--quiet", action="store_true", help="no progress lines")
    dem_sub = dem.add_subparsers(dest="which", metavar="lm", help="instead of the digits: gammace-ref demo lm --help")
    about = ("the paper's synthetic experiment: MLE vs TaiLr vs γ-CE on a language with a known oracle "
             "(needs torch and matplotlib)")
    lm = dem_sub.add_parser("lm", help=about)
    lm.add_argument("--quick", action="store_true",
                    help="a smaller setting (1.5K training sentences, 4 epochs, 1 seed): a smoke test, "
                         "about 5 minutes on 2 shared cores")
    lm.add_argument("--seeds", type=int, help="number of seeds (default: 3, or 1 with --quick)")
    lm.add_argument("--seed", type=int, default=0, help="first seed (default: %(default)s)")
    lm.add_argument("--out", default="demo-lm-out", help="directory for the tables and figures (default: %(default)s)")
    lm.add_argument("--quiet", action="store_true", help="no progress bar")
    lm.add_argument("--device", default="cpu",
                    help="torch device of the oracle and the models: cpu, cuda, cuda:1, ... (the oracle's data are "
                         "sampled on the CPU whatever the device; default: %(default)s)")
    _document(sub)
    return parser


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict:
    """Every command of ``parser``, nested ones included, by name (``"demo"``, ``"demo lm"``)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                found[prefix + name] = command
                found.update(_subcommands(command, prefix + name + " "))
    return found


def _document(sub) -> None:
    """Every command, nested ones included: a description, its defaults, its exit status."""
    for name, command in sub.choices.items():
        for full, cmd in {name: command, **_subcommands(command, name + " ")}.items():
            if full in DESCRIPTION and cmd.description is None:
                cmd.description = DESCRIPTION[full]
            for action in cmd._actions:
                _with_default(action)
            if full in EXIT_STATUS and not cmd.epilog:
                cmd.epilog = f"exit status: {EXIT_STATUS[full]}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"vectors": _vectors, "conformance": _conformance, "check": _check, "accuracy": _accuracy,
               "demo": _demo}[args.command]
    try:
        return handler(args)
    except ModuleNotFoundError as exc:
        line = _missing_extra(" ".join(filter(None, (args.command, getattr(args, "which", None)))), exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
