"""The golden vectors: checked in as generated, and reproduced by every backend.

``gammace_ref/conformance/vectors/*.json`` (format:
:mod:`gammace_ref.testing.vectors`) hold the regime battery with its mpmath
answers.  These tests check that the
files are exactly what the generator writes, and that every backend computes
each case's loss and gradient within ``regimes.TOLERANCE`` of them.
"""

import functools
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

import gammace_ref as G
from gammace_ref.testing import metrics, regimes, vectors

VECTORS = Path(__file__).parent / "vectors"
REGENERATE = "run `gammace-ref vectors --out gammace_ref/conformance/vectors --force` and commit the result"


@functools.cache
def _cases(dtype):
    return [c for c in vectors.load(VECTORS) if c.dtype == dtype]


def test_checked_in_files_match_the_generator():
    expected = vectors.generate()
    present = sorted(p.name for p in VECTORS.glob("*.json"))
    assert present == sorted(expected), f"{VECTORS}/*.json is not the generated set: {REGENERATE}"
    stale = [name for name, text in expected.items() if (VECTORS / name).read_bytes() != text.encode("utf-8")]
    assert not stale, f"{', '.join(stale)} differ from the generator's output: {REGENERATE}"


def test_files_stay_small():
    sizes = {p.name: p.stat().st_size for p in VECTORS.glob("*.json")}
    assert max(sizes.values()) <= 2_000_000 and sum(sizes.values()) <= 5_000_000, sizes


@functools.cache
def _both(eps):
    # Both losses in one function, γ and b its arguments: traced under jax.jit, one compile per
    # (shape, dtype, ε).
    def both(z, y, g, b):
        return (G.gamma_ce_value_and_grad(z, y, g, reduction="none", label_smoothing=eps),
                G.tailr_value_and_grad(z, y, g, b, reduction="none", label_smoothing=eps))

    return both


def _batches(dtype):
    """The cases grouped by (C, ε, γ): the rows of their regimes stacked, padded to one N.

    Rows are independent under reduction "none", so one call serves several
    regimes; zero rows pad every batch to the same N, which lets eager JAX
    reuse most of its per-shape compiled operations.
    """
    groups = defaultdict(lambda: defaultdict(list))
    for c in _cases(dtype):
        groups[(c.logits.shape[1], c.label_smoothing, c.gamma)][c.regime].append(c)
    n = max(sum(len(cs[0].targets) for cs in g.values()) for g in groups.values())
    for (n_classes, eps, gamma), by_regime in groups.items():
        z, y = np.zeros((n, n_classes), dtype=dtype), np.zeros(n, dtype=np.int64)
        rows, start = [], 0
        for cases in by_regime.values():
            k = len(cases[0].targets)
            z[start:start + k], y[start:start + k] = cases[0].logits, cases[0].targets
            rows += [(c, slice(start, start + k)) for c in cases]
            start += k
        yield eps, gamma, z, y, rows


def test_backend_reproduces_vectors(backend, dtype, record_property):
    tol, failures, checked, worst = regimes.TOLERANCE[dtype], [], 0, 0.0
    for eps, gamma, z_np, y_np, rows in _batches(dtype):
        z, y = backend.asarray(z_np), backend.asarray(y_np)
        (b,) = {c.threshold for c, _ in rows if c.loss == "tailr"}
        out = dict(zip(("gamma_ce", "tailr"), backend.numpy(backend.compile(_both(eps))(z, y, gamma, b))))
        for c, r in rows:
            loss_v, grad = out[c.loss]
            assert loss_v.dtype == dtype and grad.dtype == dtype
            err_v = metrics.rel_err(loss_v[r], c.expected_loss.astype(np.float64), dtype)
            err_g = metrics.rel_err(grad[r], c.expected_grad.astype(np.float64), dtype)
            checked += 1
            worst = max(worst, err_v, err_g)
            if max(err_v, err_g) > tol:
                failures.append(f"{c.id}: value rel err {err_v:.2e}, grad rel err {err_g:.2e}")
    record_property("worst_rel_err", worst)
    assert checked == len(_cases(dtype)) > 0
    assert not failures, f"{len(failures)} case(s) beyond {tol:.0e}:\n" + "\n".join(failures)


def test_load_reads_non_finite_and_exact_float32(tmp_path):
    x32 = np.float32(0.1) + np.float32(2.0) ** -27  # the float32 after 0.1f
    s = vectors.format_float(x32, "float32")
    assert s == "0.10000001"  # 9 significant digits: parsing "0.1" would give 0.1f
    doc = {"format": vectors.FORMAT, "version": vectors.VERSION, "regime": "tiny", "description": "",
           "notes": "", "reference": "", "reduction": "none"}
    for dtype in vectors.DTYPES:
        doc[dtype] = {"logits": [["-inf", s, "0.0"]], "targets": [1], "cases": [{
            "loss": "tailr", "gamma": "0.5", "threshold": "0.2", "label_smoothing": "0.0",
            "expected_loss": ["inf"], "expected_grad": [["nan", "-0.0", "1e-45"]]}]}
    (tmp_path / "tiny.json").write_text(vectors._dump(doc) + "\n", encoding="utf-8")
    c64, c32 = vectors.load(tmp_path)
    assert (c32.dtype, c32.logits.dtype, c32.expected_grad.dtype) == ("float32", np.float32, np.float32)
    assert c32.logits[0, 1] == x32 and c64.logits[0, 1] == float(s) != float(x32)
    assert c32.logits[0, 0] == -np.inf and c32.expected_loss[0] == np.inf
    assert np.isnan(c32.expected_grad[0, 0]) and np.signbit(c32.expected_grad[0, 1])
    assert c32.expected_grad[0, 2] == np.float32(2.0) ** -149 > 0  # smallest float32 subnormal
    assert (c32.gamma, c32.threshold, c32.label_smoothing) == (0.5, 0.2, 0.0)
    assert vectors.format_float(c32.expected_grad[0, 2], "float32") == "1e-45"
    assert [vectors.format_float(v, "float64") for v in (math.inf, -math.inf, math.nan)] == ["inf", "-inf", "nan"]


def test_round_to_is_one_correct_rounding():
    import mpmath

    two = mpmath.mpf(2)
    with mpmath.mp.workdps(60):  # the numbers are exact; round_to then runs at mpmath's default precision
        above_mid = 1 + two ** -24 + two ** -80
        top = (2 - two ** -23) * two ** 127  # largest float32
        below_over, at_over = top + two ** 103 * (1 - two ** -40), top + two ** 103
        sub_tie, sub_tie3, sub_above = two ** -150, 3 * two ** -150, two ** -150 * (1 + two ** -50)
        third = mpmath.mpf(1) / 3
    # Just above the float32 midpoint between 1 and 1 + 2^-23: through float64 it lands on
    # the midpoint and ties to 1.0; one rounding gives 1 + 2^-23.
    assert vectors.round_to(above_mid, "float32") == 1 + 2.0 ** -23
    assert float(np.float32(float(above_mid))) == 1.0
    assert vectors.round_to(sub_tie, "float32") == 0.0  # tie to even (0)
    assert vectors.round_to(sub_tie3, "float32") == 2.0 ** -148  # tie to even (2 quanta)
    assert vectors.round_to(sub_above, "float32") == 2.0 ** -149
    assert vectors.round_to(below_over, "float32") == float(np.finfo(np.float32).max)
    assert vectors.round_to(at_over, "float32") == math.inf  # tie to even overflows
    assert vectors.round_to(-mpmath.mpf(10) ** 400, "float64") == -math.inf
    assert vectors.round_to(mpmath.mpf(10) ** -400, "float64") == 0.0
    assert vectors.round_to(third, "float64") == 1 / 3
    assert vectors.round_to(-third, "float32") == float(np.float32(-1 / 3))
