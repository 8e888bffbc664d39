"""The over-confidence demo: cross-entropy against γ-CE and TaiLr on digits with noisy labels.

``gammace-ref demo`` (or :func:`run`) trains a small multilayer perceptron
(64 → 32 → 10, ReLU) on scikit-learn's bundled 8×8 digits (1797 images, no
download) whose *training* labels are corrupted with symmetric noise: with
probability η a label is replaced by one of the 9 other classes, uniformly.
Every loss trains the same network from the same initialisation on the same
noisy labels (per seed), with the same optimiser (Adam, minibatches of 64);
the gradient of the loss with respect to the logits is the library's own
(:func:`gammace_ref.gamma_ce_value_and_grad`,
:func:`gammace_ref.tailr_value_and_grad`), back-propagated through the
network by hand.  NumPy only; no GPU.

Losses (:data:`LOSSES`): cross-entropy (γ = 0), γ-CE at γ ∈ {0.1, 0.5, 0.8},
TaiLr (γ = 0.8, b = 0.2: the paper's summarisation setting, without label
smoothing) and γ-CE with γ moving linearly from 0 to 0.8 over training
(:func:`gammace_ref.gamma_schedule`).

Reported on the *clean* test split (40 % of the data, stratified), as mean ±
standard deviation over seeds: accuracy, negative log-likelihood, expected
calibration error (15 equal-width confidence bins), mean confidence (the
largest predicted probability), and the share of the corrupted training
labels the network ended up predicting ("fitted": memorised noise).

Outputs in ``out``: ``demo-table.md`` (the table), ``demo-results.json``
(every run), ``demo-reliability.png`` (reliability diagrams, one per loss,
at the highest noise level) and ``demo-noise.png`` (accuracy and ECE against
the noise level).

Needs the ``demo`` extra (scikit-learn, matplotlib).

Examples
--------
>>> from gammace_ref import demo
>>> result = demo.run(noise=(0.4,), seeds=1, epochs=5, out="demo-out")  # doctest: +SKIP
>>> print(result.table)                                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ._api import gamma_ce, gamma_ce_value_and_grad, tailr_value_and_grad
from ._schedule import gamma_schedule
from ._validation import positive_int

__all__ = ["LOSSES", "DemoResult", "Loss", "expected_calibration_error", "run"]

NOISE = (0.0, 0.2, 0.4)
SEEDS = 3
EPOCHS = 60
HIDDEN = 32
BATCH = 64
LR = 3e-3
BINS = 15
TEST_FRACTION = 0.4
FILES = ("demo-table.md", "demo-results.json", "demo-reliability.png", "demo-noise.png")


@dataclass(frozen=True)
class Loss:
    """One training loss of the demo: γ-CE at fixed γ, TaiLr, or γ-CE on a γ schedule."""

    name: str
    kind: str  # "gamma_ce", "tailr" or "schedule"
    gamma: float  # the γ (for "schedule": the end of the ramp, from 0)
    threshold: float = 0.0  # TaiLr's b


LOSSES = (
    Loss("CE (γ=0)", "gamma_ce", 0.0),
    Loss("γ-CE γ=0.1", "gamma_ce", 0.1),
    Loss("γ-CE γ=0.5", "gamma_ce", 0.5),
    Loss("γ-CE γ=0.8", "gamma_ce", 0.8),
    Loss("TaiLr γ=0.8 b=0.2", "tailr", 0.8, 0.2),
    Loss("γ-CE γ: 0→0.8", "schedule", 0.8),
)


@dataclass
class DemoResult:
    """What :func:`run` returns: every run's metrics, the Markdown table, the files written."""

    runs: list = field(default_factory=list)  # one dict per (noise, seed, loss)
    table: str = ""
    files: list = field(default_factory=list)
    seconds: float = 0.0


def save_figure(fig, out, name, files) -> None:
    """Write ``fig`` as ``out/name`` (PNG, 100 dpi) and add its path to ``files`` (both demos' figures)."""
    path = os.path.join(out, name)
    fig.savefig(path, dpi=100)
    files.append(path)


def expected_calibration_error(confidence, correct, bins=BINS):
    """Expected calibration error: ``Σ_b |B_b|/n · |accuracy(B_b) - confidence(B_b)|``.

    ``confidence`` is the largest predicted probability of each example,
    ``correct`` whether that prediction is right; ``bins`` equal-width bins
    on [0, 1] (the first one closed).

    Examples
    --------
    >>> import numpy as np
    >>> round(expected_calibration_error(np.array([0.9, 0.9, 0.6, 0.6]),
    ...                                  np.array([True, True, True, False])), 3)
    0.1
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    idx = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    acc = np.bincount(idx, weights=correct, minlength=bins)
    conf = np.bincount(idx, weights=confidence, minlength=bins)
    return float(np.abs(acc - conf).sum() / max(confidence.size, 1))


def _reliability_bins(confidence, correct, bins=BINS):
    idx = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    acc = np.bincount(idx, weights=correct.astype(np.float64), minlength=bins)
    conf = np.bincount(idx, weights=confidence, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return n, np.where(n > 0, acc / np.maximum(n, 1), np.nan), np.where(n > 0, conf / np.maximum(n, 1), np.nan)


def _data(seed, noise):
    """Standardised train/test split of the digits, the noisy training labels and which were flipped."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=seed)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    rng = np.random.default_rng([seed, 1])
    flip = rng.random(y_tr.size) < noise
    # symmetric noise: a flipped label is one of the other 9 classes, uniformly
    y_noisy = np.where(flip, (y_tr + rng.integers(1, 10, y_tr.size)) % 10, y_tr)
    return x_tr, y_noisy.astype(np.int64), flip, x_te, y_te.astype(np.int64)


def _init(seed, n_in, n_hidden, n_out):
    rng = np.random.default_rng([seed, 2])
    return [rng.standard_normal((n_in, n_hidden)) * math.sqrt(2.0 / n_in), np.zeros(n_hidden),
            rng.standard_normal((n_hidden, n_out)) * math.sqrt(1.0 / n_hidden), np.zeros(n_out)]


def _forward(params, x):
    w1, b1, w2, b2 = params
    h = np.maximum(x @ w1 + b1, 0.0)
    return h, h @ w2 + b2


def _loss_grad(loss, logits, y, gamma):
    """Mean loss and its gradient with respect to the logits, from gammace_ref."""
    if loss.kind == "tailr":
        return tailr_value_and_grad(logits, y, gamma, loss.threshold)
    return gamma_ce_value_and_grad(logits, y, gamma)


def _train(loss, x, y, seed, epochs):
    """Adam on minibatches; the network's gradient is back-propagated from gammace_ref's dL/dlogits."""
    params = _init(seed, x.shape[1], HIDDEN, 10)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / BATCH)
    total = epochs * steps_per_epoch
    schedule = gamma_schedule(0.0, loss.gamma, total_steps=total) if loss.kind == "schedule" else None
    rng = np.random.default_rng([seed, 3])
    step = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH]
            xb, yb = x[idx], y[idx]
            h, logits = _forward(params, xb)
            gamma = schedule(step) if schedule is not None else loss.gamma
            _, g = _loss_grad(loss, logits, yb, gamma)
            dh = (g @ params[2].T) * (h > 0)  # through the output layer and the ReLU
            grads = [xb.T @ dh, dh.sum(axis=0), h.T @ g, g.sum(axis=0)]
            step += 1
            c1, c2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
            for p, gr, mi, vi in zip(params, grads, m, v):
                mi *= beta1
                mi += (1.0 - beta1) * gr
                vi *= beta2
                vi += (1.0 - beta2) * gr * gr
                p -= LR * (mi / c1) / (np.sqrt(vi / c2) + eps)
    return params


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _evaluate(params, x_te, y_te, x_tr, y_noisy, flip):
    _, logits = _forward(params, x_te)
    prob = _softmax(logits)
    pred = prob.argmax(axis=1)
    conf = prob.max(axis=1)
    correct = pred == y_te
    pred_tr = _forward(params, x_tr)[1].argmax(axis=1)
    fitted = float((pred_tr[flip] == y_noisy[flip]).mean()) if flip.any() else float("nan")
    return {"accuracy": float(correct.mean()),
            "nll": float(gamma_ce(logits, y_te, 0.0)),  # cross-entropy, exact in every regime
            "ece": expected_calibration_error(conf, correct),
            "confidence": float(conf.mean()),
            "fitted_noise": fitted}, conf, correct


METRICS = (("accuracy", "accuracy ↑"), ("nll", "NLL ↓"), ("ece", "ECE ↓"), ("confidence", "confidence"),
           ("fitted_noise", "wrong labels fitted ↓"))


def _fmt(values):
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.3f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.3f}\u00a0±\u00a0{sd:.3f}"  # no-break spaces: one line per cell


def make_table(runs, losses=LOSSES):
    """The Markdown table of :func:`run`: mean ± sd over seeds per (noise, loss)."""
    noises = sorted({r["noise"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    lines = ["| noise | loss | " + " | ".join(h for _, h in METRICS) + " |",
             "|---:|---|" + "---:|" * len(METRICS)]
    for eta in noises:
        for loss in losses:
            rs = [r for r in runs if r["noise"] == eta and r["loss"] == loss.name]
            if rs:
                lines.append(f"| {eta:.0%} | {loss.name} | "
                             + " | ".join(_fmt([r[k] for r in rs]) for k, _ in METRICS) + " |")
    epochs = runs[0]["epochs"] if runs else 0
    lines.append("")
    lines.append(f"Clean test split of the digits ({TEST_FRACTION:.0%}), MLP 64-{HIDDEN}-10, Adam lr {LR:g}, "
                 f"batch {BATCH}, {epochs} epochs; mean ± sd over {len(seeds)} seed(s) {seeds}. "
                 f"ECE: {BINS} equal-width bins. \"wrong labels fitted\": share of the corrupted training "
                 "labels the network predicts.")
    return "\n".join(lines) + "\n"


def _plots(out, runs, pooled, losses, noise_levels, reliability_noise):
    from matplotlib.figure import Figure

    files = []
    # Reliability diagrams at one noise level, seeds pooled.
    cols = 3
    rows = math.ceil(len(losses) / cols)
    fig = Figure(figsize=(4.0 * cols, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    edges = np.linspace(0.0, 1.0, BINS + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    for ax, loss in zip(axes.ravel(), losses):
        conf, correct = pooled[(reliability_noise, loss.name)]
        n, acc, mean_conf = _reliability_bins(conf, correct)
        has = n > 0
        ax.bar(centers[has], acc[has], width=1.0 / BINS, edgecolor="black", color="tab:blue", label="accuracy")
        ax.bar(centers[has], (mean_conf - acc)[has], bottom=acc[has], width=1.0 / BINS, fill=False,
               hatch="///", edgecolor="tab:red", lw=0.8, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ece = expected_calibration_error(conf, correct)
        ax.set_title(f"{loss.name}\nECE {ece:.3f}, accuracy {correct.mean():.3f}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    for ax in axes.ravel()[len(losses):]:
        ax.set_visible(False)
    axes.ravel()[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability on the clean test split, {reliability_noise:.0%} label noise (seeds pooled)\n"
                 "accuracy above the diagonal: under-confident; below: over-confident", fontsize=11)
    save_figure(fig, out, "demo-reliability.png", files)

    # Accuracy and ECE against the noise level.
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_acc, ax_ece = fig.subplots(1, 2)
    for i, loss in enumerate(losses):
        for ax, key in ((ax_acc, "accuracy"), (ax_ece, "ece")):
            mean, sd = [], []
            for eta in noise_levels:
                vals = np.array([r[key] for r in runs if r["noise"] == eta and r["loss"] == loss.name])
                mean.append(vals.mean())
                sd.append(vals.std(ddof=1) if vals.size > 1 else 0.0)
            x = np.asarray(noise_levels) * 100 + (i - (len(losses) - 1) / 2) * 0.4  # dodge
            ax.errorbar(x, mean, yerr=sd, marker="o", capsize=3, label=loss.name,
                        ls="--" if loss.kind != "gamma_ce" else "-")
    ax_acc.set_title("clean test accuracy ↑")
    ax_ece.set_title(f"expected calibration error ({BINS} bins) ↓")
    for ax in (ax_acc, ax_ece):
        ax.set_xlabel("symmetric label noise on the training set (%)")
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    save_figure(fig, out, "demo-noise.png", files)
    return files


def run(noise=NOISE, seeds=SEEDS, seed=0, epochs=EPOCHS, out="demo-out", losses=LOSSES, progress=sys.stderr,
        plots=True) -> DemoResult:
    """Train every loss at every noise level for ``seeds`` seeds; write the table and figures to ``out``.

    Parameters
    ----------
    noise : sequence of float in [0, 0.9)
        Symmetric label-noise rates of the training labels.
    seeds : int >= 1
        Number of seeds: ``seed, seed + 1, ...``.  Each seed draws its own
        train/test split, noisy labels and initialisation, shared by every loss.
    seed : int
        The first seed.
    epochs : int >= 1
        Passes over the training split.
    out : str or path
        Directory for ``demo-table.md``, ``demo-results.json``,
        ``demo-reliability.png``, ``demo-noise.png`` (created if needed).
    losses : sequence of :class:`Loss`
        The losses compared (default :data:`LOSSES`).
    progress : file or None
        Where the progress lines go (``None``: nowhere).
    plots : bool
        Write the PNG figures (needs matplotlib).

    Returns
    -------
    DemoResult
        ``runs`` (one dict of metrics per noise × seed × loss), ``table``
        (Markdown), ``files`` written and ``seconds`` taken.
    """
    noise = tuple(float(eta) for eta in noise)
    if not noise or any(not 0.0 <= eta < 0.9 for eta in noise):
        raise ValueError(f"noise levels must be in [0, 0.9), got {noise}")
    seeds, epochs = positive_int("seeds", seeds), positive_int("epochs", epochs)
    try:
        import sklearn  # noqa: F401
        if plots:
            import matplotlib  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"gammace-ref demo needs the demo extra: pip install 'gammace_ref[demo]' ({exc})")
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    result = DemoResult()
    pooled = {}
    total = len(noise) * seeds * len(losses)
    done = 0
    for eta in noise:
        for s in range(seed, seed + seeds):
            x_tr, y_noisy, flip, x_te, y_te = _data(s, eta)
            for loss in losses:
                params = _train(loss, x_tr, y_noisy, s, epochs)
                metrics, conf, correct = _evaluate(params, x_te, y_te, x_tr, y_noisy, flip)
                result.runs.append({"noise": eta, "seed": s, "loss": loss.name, "kind": loss.kind,
                                    "gamma": loss.gamma, "threshold": loss.threshold, "epochs": epochs,
                                    **metrics})
                c, k = pooled.get((eta, loss.name), (np.empty(0), np.empty(0, dtype=bool)))
                pooled[(eta, loss.name)] = (np.concatenate([c, conf]), np.concatenate([k, correct]))
                done += 1
                if progress is not None:
                    print(f"[{time.perf_counter() - start:6.1f}s] {done:3}/{total} noise {eta:4.0%} seed {s} "
                          f"{loss.name:18} accuracy {metrics['accuracy']:.3f} ECE {metrics['ece']:.3f} "
                          f"confidence {metrics['confidence']:.3f}", file=progress, flush=True)
    result.table = make_table(result.runs, losses)
    path = os.path.join(out, "demo-table.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("<!-- generated by: gammace-ref demo " + _argline(noise, seeds, seed, epochs, out) + " -->\n\n")
        f.write(result.table)
    result.files.append(path)
    path = os.path.join(out, "demo-results.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"noise": list(noise), "seeds": list(range(seed, seed + seeds)), "epochs": epochs,
                   "hidden": HIDDEN, "batch": BATCH, "lr": LR, "bins": BINS, "runs": result.runs},
                  f, indent=1, ensure_ascii=False)
        f.write("\n")
    result.files.append(path)
    if plots:
        result.files += _plots(out, result.runs, pooled, losses, noise, max(noise))
    result.seconds = time.perf_counter() - start
    return result


def _argline(noise, seeds, seed, epochs, out):
    parts = ["--noise " + " ".join(f"{eta:g}" for eta in noise), f"--seeds {seeds}", f"--seed {seed}"]
    if epochs != EPOCHS:
        parts.append(f"--epochs {epochs}")
    return " ".join(parts + [f"--out {out}"])
