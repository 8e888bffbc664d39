"""Real implementations through the oracle: who passes what (the table of docs/oracle.md).

    python gammace_ref/conformance/test_oracle_peers.py      # regenerate docs/examples/peer-table.md

The test runs every peer under both profiles and fails when the committed
table no longer says what it measures (so the table cannot go stale): the
verdicts must be the same, every listed failure must still fail, and every
failure by more than 16× the tolerance must be listed (the table lists those
beyond 4×; the band between leaves room for the last bits of another
machine's summation order).  A verdict must also be clear-cut: a pass within
0.6 of its tolerance (a correctly rounded 16-bit result is within 0.5), a
failure by at least 4×.
"""

import pathlib

import pytest

from gammace_ref.testing import check_implementation, regimes, table

torch = pytest.importorskip("torch", reason="torch is not installed: most peers are torch kernels")
F = torch.nn.functional

from gammace_ref.conformance import kernels as K  # noqa: E402

# The checkout's docs (absent from an installed wheel: the table check then skips).
TABLE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "examples" / "peer-table.md"
FAILS_BY = 4.0  # a failure is listed when the error exceeds the tolerance this many times
TRAINING = dict(reduction="mean", ignore_index=-100, label_smoothing=0.1)
TAILR = dict(loss="tailr", reduction="sum", ignore_index=-100, label_smoothing=0.1)


def torch_cross_entropy(logits, targets, gamma, **options):
    assert gamma == 0, "cross-entropy is γ-CE at γ = 0"
    return F.cross_entropy(logits, targets, **options)


def optax_cross_entropy(logits, targets, gamma):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def gammace_ref_torch(logits, targets, gamma):
    import gammace_ref.torch as gt

    return gt.gamma_ce(logits, targets, gamma, reduction="none", compiled=False)


def gammace_ref_jax(logits, targets, gamma):
    import gammace_ref.jax as gj

    return gj.gamma_ce(logits, targets, gamma, reduction="none")


# (name, candidate, arguments of check_implementation, needs)
PEERS = [
    ("torch `F.cross_entropy`", torch_cross_entropy,
     dict(backend="torch", gammas=(0.0,), dtypes=("float64", "float32", "bfloat16"), **TRAINING), ()),
    ("optax `softmax_cross_entropy_with_integer_labels`", optax_cross_entropy,
     dict(backend="jax.jit", gammas=(0.0,)), ("optax",)),
    ("official TaiLr criterion (formula transcribed)", K.official_tailr, dict(backend="torch", **TAILR), ()),
    ("textbook formula (softmax, then the loss)", K.naive_gamma_ce, dict(backend="torch"), ()),
    ("careful value, backward `w·(softmax - onehot)`", K.onehot_backward, dict(backend="torch"), ()),
    ("careful bf16 kernel (float32 compute)", K.careful_gamma_ce,
     dict(backend="torch", dtypes=("bfloat16", "float16")), ()),
    ("the same formulas computed in bf16", K.sloppy_bf16, dict(backend="torch", dtypes=("bfloat16",)), ()),
    ("careful training kernel", K.training_gamma_ce,
     dict(backend="torch", dtypes=("float64", "float32", "bfloat16"), **TRAINING), ()),
    ("gammace_ref.torch", gammace_ref_torch,
     dict(backend="torch", dtypes=("float64", "float32", "bfloat16", "float16")), ()),
    ("gammace_ref.jax under jax.jit", gammace_ref_jax, dict(backend="jax.jit", dtypes=("float64", "float32")),
     ("jax",)),
]


def _call(kwargs) -> str:
    parts = [kwargs["backend"], "/".join(d.replace("float", "f").replace("bf", "bf") for d in
                                         kwargs.get("dtypes", ("float64", "float32")))]
    if "loss" in kwargs:
        parts.append(kwargs["loss"])
    if kwargs.get("gammas") == (0.0,):
        parts.append("γ = 0")
    opts = [f"{k}={kwargs[k]!r}" for k in ("reduction", "ignore_index", "label_smoothing") if k in kwargs]
    return ", ".join(parts + opts)


def _failures(report, beyond: float) -> dict:
    """``{(case, quantity): worst ratio}`` of the checks failing by more than ``beyond``× (errors: inf)."""
    found = {}
    for e in report.entries:
        for q, c in e.checks.items():
            if c.ratio > beyond:
                found[(e.case, q)] = max(found.get((e.case, q), 0.0), c.ratio)
        if e.error is not None:
            found[(e.case, "raises" if e.status == "ERROR" else "shape")] = float("inf")
    return found


def _where(failures) -> str:
    by_case = {}
    for case, q in failures:
        by_case.setdefault(case, set()).add(q)
    return "; ".join(f"{case} ({', '.join(sorted(qs))})" for case, qs in by_case.items()) or "-"


def _parse_where(text: str) -> set:
    out = set()
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if part == "-":
            continue
        case, _, qs = part.rpartition(" (")
        out |= {(case, q.strip()) for q in qs.rstrip(")").split(",")}
    return out


def measure():
    """``[(name, call, reference verdict, kernel verdict, where reference fails)]``, the reference reports'
    failures (``{(case, quantity): ratio}`` beyond 1×) and the verdicts that are not clear-cut."""
    rows, failures, marginal = [], {}, []
    for name, fn, kwargs, needs in PEERS:
        for module in needs:
            pytest.importorskip(module, reason=f"{module} is not installed: the peer table needs it")
        verdicts = []
        for profile in ("reference", "kernel"):
            report = check_implementation(fn, profile=profile, **kwargs)
            ratios = [c.ratio for e in report.entries for c in e.checks.values()]
            errors = [e for e in report.entries if e.error is not None]
            if report.passed and max(ratios, default=0.0) > 0.6:
                marginal.append(f"{name} ({profile}): passes with {max(ratios):.2f} of its tolerance")
            if not report.entries:
                marginal.append(f"{name} ({profile}): nothing checked: {report.not_accepted}")
            elif not report.passed and not errors and max(ratios, default=0.0) <= FAILS_BY:
                marginal.append(f"{name} ({profile}): fails by {max(ratios):.2f}× only")
            verdicts.append(("**pass**" if report.passed else "fail"))
            if profile == "reference":
                failures[name] = _failures(report, 1.0)
        listed = {k for k, r in failures[name].items() if r > FAILS_BY}
        rows.append([name, _call(kwargs), *verdicts, _where(sorted(listed, key=list(failures[name]).index))])
    return rows, failures, marginal


def render(rows) -> str:
    head = ("<!-- generated by: python gammace_ref/conformance/test_oracle_peers.py (checked by that test) -->\n\n")
    body = table.render(["implementation", "checked as", "profile reference", "profile kernel",
                         f"fails (reference profile, by more than {FAILS_BY:g}× the tolerance)"],
                        rows, markdown=True, align="<<<<<")
    gammas = ", ".join(repr(g) for g in regimes.GAMMAS)
    return head + body + f"\n\nγ ∈ {{{gammas}}} unless marked; TaiLr b = {regimes.TAILR_THRESHOLD}.\n"


@pytest.mark.slow
def test_peer_table_is_current_and_robust():
    if not TABLE.is_file():
        pytest.skip(f"{TABLE} is not here (an installed wheel): the table is a checkout's document")
    rows, failures, marginal = measure()
    assert not marginal, "verdicts too close to their tolerance to be the same on every machine:\n" + "\n".join(
        marginal)
    stale = "docs/examples/peer-table.md is stale (run `python gammace_ref/conformance/test_oracle_peers.py`): "
    committed = {}
    for line in TABLE.read_text(encoding="utf-8").splitlines()[4:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if len(cells) == 5:
            committed[cells[0]] = cells
    assert set(committed) == {r[0] for r in rows}, stale + "other peers"
    for name, call, ref, kernel, _ in rows:
        c = committed[name]
        assert c[1:4] == [call, ref, kernel], stale + f"{name}: {c[1:4]} != {[call, ref, kernel]}"
        listed, now = _parse_where(c[4]), failures[name]
        assert listed <= set(now), stale + f"{name} no longer fails at {sorted(listed - set(now))}"
        missing = {k for k, r in now.items() if r > 4 * FAILS_BY} - listed
        assert not missing, stale + f"{name} also fails at {sorted(missing)}"


if __name__ == "__main__":
    rows, _, marginal = measure()
    TABLE.write_text(render(rows), encoding="utf-8")
    print(TABLE.read_text(encoding="utf-8"))
    for line in marginal:
        print("marginal:", line)
