"""The paper's synthetic experiment: MLE against TaiLr and γ-CE on a language with a known oracle.

``gammace-ref demo lm`` (or :func:`run`) follows the protocol of the
synthetic experiment of Ji et al. (ICLR 2023; ``examples/synthetic/`` of
thu-coai/TaiLr), self-contained, on the CPU, without a download:

1. **An oracle language model** whose sequence probability is known exactly:
   a one-layer LSTM with 128 units (the paper's oracle size) and random
   parameters, the synthetic setting of SeqGAN and LeakGAN, rather than one
   trained on text: nothing to download or train, and the same oracle
   wherever it runs.  A plain random LSTM is either noise (small output
   weights) or a language no model learns from 10K sentences (its
   dependencies are hash-like), so :class:`OracleSpec` shapes it: words
   fall into 40 classes whose members have nearby input and output
   embeddings (the structure a model can generalise over, as with parts of
   speech), the output bias follows Zipf's law (word ``k`` gets
   ``-log k``: a long tail), the output layer's scale sets the entropy
   (3.4 nats per token, perplexity ~31), and the end-of-sequence logit
   gets a bias growing with the position, so that sentences have 20 ± 3
   words.  2000 tokens: 1999 words and the end of sequence.
2. **Data sampled from it** (ancestral sampling, temperature 1): 10K
   training and 5K validation sequences (the paper's sizes) and 10K test
   sequences, drawn anew for each seed.
3. **Models of the oracle's architecture** (its per-position end bias
   included, learned from zero), trained per seed from one shared
   initialisation with each loss of :data:`LOSSES` through
   :mod:`gammace_ref.torch`: Adam, dropout 0.1, gradient norm clipped at
   0.1 (as the official scripts), until the validation NLL has not improved
   for ``patience`` epochs; the checkpoint with the best validation NLL is
   kept, for every loss, as the paper does (``--best-checkpoint-metric
   nll_loss``).
4. **Metrics**, the paper's: ``PPL_oracle``, the oracle's perplexity on
   10K samples of the model (quality); ``PPL_test``, the model's perplexity
   on the held-out oracle samples (coverage); ``BLEU-4`` of the model's
   samples against 500 oracle samples and ``Self-BLEU-4`` of 500 model
   samples against each other (:func:`bleu`, :func:`self_bleu`: NLTK's
   ``sentence_bleu`` with smoothing ``method1``, averaged, as the scripts'
   ``bleu.py`` and ``selfbleu.py``); and the perturbation curve of
   ``perturb_degen.py``: held-out oracle sentences corrupted ``k = 1 … K``
   times by :func:`repeat` (a token repeated), :func:`delete` (the last
   word dropped) or :func:`substitute` (a token replaced by a random word),
   and the mean ``log p_model(x) - log p_oracle(x)`` (nats per sentence)
   against ``k``: how much more probability than the truth a model gives
   corrupted text.

Perplexities count the end-of-sequence token, as fairseq does.  Every
difference from the paper's protocol is listed in docs/demo.md.

Outputs in ``out``: ``lm-table.md`` (the tables), ``lm-results.json``
(settings, the oracle's statistics, every run with its curves),
``lm-quality-coverage.png`` (PPL_oracle against PPL_test),
``lm-perturbation.png`` (the perturbation curves) and ``lm-training.png``
(validation NLL per epoch); the first two are rewritten after every finished
run, so a run stopped by a time limit leaves its finished part.  ``device``
(``--device cuda``) runs the oracle and the models on a GPU; the oracle's
data are sampled on the CPU whatever the device.

Needs torch and matplotlib (the ``torch`` and ``demo`` extras); torch is
imported when a function here runs, never by ``import gammace_ref``.

Examples
--------
>>> from gammace_ref import demo_lm
>>> result = demo_lm.run(demo_lm.QUICK, seeds=1, out="demo-lm-out")  # doctest: +SKIP
>>> print(result.table)                                                # doctest: +SKIP
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from ._schedule import gamma_schedule

__all__ = ["FULL", "LOSSES", "QUICK", "Loss", "LMResult", "OracleSpec", "Setting", "bleu", "delete", "make_oracle",
           "repeat", "run", "sample", "self_bleu", "sentence_bleu", "sequence_logprob", "substitute"]

EOS = 0  # output class 0 ends a sequence; 1 … vocab-1 are words; the input BOS is index `vocab`
IGNORE = -100
LR = 3e-3  # the scripts: 1e-3 (with ~200 sequences per batch and up to 100 epochs)
DROPOUT = 0.1
CLIP_NORM = 0.1
EVAL_BATCH = 1000
SAMPLE_CHUNK = 4000
FILES = ("lm-table.md", "lm-results.json", "lm-quality-coverage.png", "lm-perturbation.png", "lm-training.png")
PERTURBATIONS = ("repeat", "delete", "substitute")


@dataclass(frozen=True)
class Loss:
    """One training loss: γ-CE at a fixed γ (γ = 0: MLE), TaiLr, or γ-CE on a γ schedule."""

    name: str
    kind: str  # "gamma_ce", "tailr" or "schedule"
    gamma: float  # for "schedule": the end of the ramp from 0
    threshold: float = 0.0  # TaiLr's b


LOSSES = (
    Loss("MLE", "gamma_ce", 0.0),
    Loss("TaiLr γ=1e-7 b=0.2", "tailr", 1e-7, 0.2),  # the paper's synthetic setting
    Loss("TaiLr γ=0.01 b=0.2", "tailr", 0.01, 0.2),
    Loss("γ-CE γ=0.001", "gamma_ce", 0.001),
    Loss("γ-CE γ=0.01", "gamma_ce", 0.01),
    Loss("γ-CE γ: 0→0.01", "schedule", 0.01),
)


@dataclass(frozen=True)
class OracleSpec:
    """The oracle: an LSTM language model with these random parameters (one draw per ``seed``).

    Every token (and the input BOS) belongs to one of ``classes`` classes,
    uniformly at random.  Its input embedding is its class's centre,
    N(0, 1) per coordinate, plus N(0, ``word_noise``²) noise; its output
    weights likewise (other centres), times ``out_scale / sqrt(hidden)``
    (the inverse temperature: larger is lower entropy).  Every LSTM weight
    and bias is N(0, ``lstm_std``²).  The output bias of word ``k`` is
    ``-zipf · log k``; the end-of-sequence row of the output weights is
    multiplied by ``eos_context`` and the end logit at position ``t`` (``t``
    words so far) gets ``eos_start + eos_slope · t``.  After ``max_len``
    words the sequence ends (probability 1), for the oracle and the models.
    """

    vocab: int = 2000
    hidden: int = 128
    max_len: int = 50
    classes: int = 40
    word_noise: float = 0.5
    lstm_std: float = 0.3
    out_scale: float = 8.0
    zipf: float = 1.0
    eos_context: float = 0.5
    eos_start: float = -8.0
    eos_slope: float = 0.6
    seed: int = 1234


@dataclass(frozen=True)
class Setting:
    """Sizes of one run of :func:`run` (:data:`FULL`, :data:`QUICK`, or your own)."""

    name: str
    train: int  # training sequences (the paper: 10K)
    valid: int  # validation sequences, for early stopping (the paper: 5K)
    test: int  # held-out oracle sequences for PPL_test (the paper: 20K)
    samples: int  # model samples for PPL_oracle and BLEU-4 (the paper: 20K)
    refs: int = 500  # oracle samples as BLEU references; model samples in Self-BLEU (bleu.py: 500)
    perturb: int = 500  # held-out sequences corrupted per perturbation type
    corruptions: int = 10  # K: corruptions applied, 1 … K
    max_epochs: int = 15
    patience: int = 3  # epochs without a better validation NLL before stopping
    ramp_epochs: int = 5  # the γ schedule reaches its end after this many epochs
    batch: int = 64  # sequences per batch (~1.4K tokens; the scripts: --max-tokens 4096)
    temperatures: tuple = (0.9, 0.8, 0.7)  # the baseline (first loss) re-evaluated with logits / T
    oracle: OracleSpec = field(default_factory=OracleSpec)


FULL = Setting("full", train=10_000, valid=5_000, test=10_000, samples=10_000)
QUICK = Setting("quick", train=1_500, valid=300, test=800, samples=800, refs=200, perturb=150,
                max_epochs=4, patience=2, ramp_epochs=2, temperatures=(0.8,))


@dataclass
class LMResult:
    """What :func:`run` returns: every run's metrics, the oracle's, the Markdown tables, the files written."""

    runs: list = field(default_factory=list)  # one dict per (seed, loss)
    oracle: list = field(default_factory=list)  # one dict per seed: the oracle's own metrics
    table: str = ""
    files: list = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"  # where the models ran (the oracle's data are sampled on the CPU)


# --------------------------------------------------------------------------- the language model


def _new_lm(spec: OracleSpec):
    """Embedding → LSTM → linear, plus a learned end-of-sequence bias per position."""
    import torch

    nn = torch.nn
    lm = nn.ModuleDict({"embed": nn.Embedding(spec.vocab + 1, spec.hidden),  # + the input BOS
                        "lstm": nn.LSTM(spec.hidden, spec.hidden, batch_first=True),
                        "out": nn.Linear(spec.hidden, spec.vocab),
                        "eos": nn.Embedding(spec.max_len + 1, 1)})
    nn.init.zeros_(lm["eos"].weight)
    return lm


def make_oracle(spec: OracleSpec = OracleSpec()):
    """The oracle of ``spec``: an LSTM language model (``torch.nn.ModuleDict``) in eval mode, float32."""
    import torch

    g = torch.Generator().manual_seed(spec.seed)
    with torch.random.fork_rng():  # the default initialisation draws from the global generator
        torch.manual_seed(spec.seed)
        lm = _new_lm(spec)
    with torch.no_grad():
        # word classes: the words of a class have nearby input and output embeddings
        cls = torch.randint(0, spec.classes, (spec.vocab + 1,), generator=g)
        centre_in = torch.randn(spec.classes, spec.hidden, generator=g)
        centre_out = torch.randn(spec.classes, spec.hidden, generator=g)
        noise = spec.word_noise
        lm["embed"].weight.copy_(centre_in[cls] + noise * torch.randn(spec.vocab + 1, spec.hidden, generator=g))
        for p in lm["lstm"].parameters():
            p.copy_(torch.randn(p.shape, generator=g) * spec.lstm_std)
        w = (centre_out[cls[:spec.vocab]] + noise * torch.randn(spec.vocab, spec.hidden, generator=g))
        w *= spec.out_scale / math.sqrt(spec.hidden)
        w[EOS] *= spec.eos_context
        lm["out"].weight.copy_(w)
        rank = torch.arange(spec.vocab, dtype=torch.float64).clamp(min=1.0)
        bias = -spec.zipf * torch.log(rank)
        bias[EOS] = 0.0
        lm["out"].bias.copy_(bias)
        lm["eos"].weight.copy_((spec.eos_start + spec.eos_slope * torch.arange(spec.max_len + 1.0))[:, None])
    lm.requires_grad_(False)
    return lm.eval()


def _device_of(lm):
    return lm["out"].weight.device


def _check_device(device):
    """``device`` as a ``torch.device`` on which a tensor can be made, or a ValueError naming it."""
    import torch

    try:
        d = torch.device(device)
        torch.empty(1, device=d)
    except (RuntimeError, TypeError, AssertionError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"device must be a torch device available here ('cpu', 'cuda', 'cuda:1', ...), "
                         f"got {device!r} ({why})") from None
    return d


def _logits(lm, inputs, state=None, pos=0, dropout=0.0):
    """Logits ``(B, T, vocab)`` after the inputs ``(B, T)`` at positions ``pos … pos+T-1``, and the LSTM state."""
    import torch

    F = torch.nn.functional
    x = lm["embed"](inputs)
    if dropout:
        x = F.dropout(x, dropout, training=True)
    h, state = lm["lstm"](x, state)
    if dropout:
        h = F.dropout(h, dropout, training=True)
    b, t = inputs.shape
    # one (B·T, H) × (H, vocab) product: the LSTM's output is not always foldable, and F.linear on it
    # then runs B small matrix products (measured: 5-10× slower)
    z = F.linear(h.reshape(b * t, -1), lm["out"].weight, lm["out"].bias).view(b, t, -1)
    # the end-of-sequence bias of each position, on the EOS column only (addmm does not need z for backward)
    z[:, :, EOS] += lm["eos"].weight[pos:pos + t, 0]
    return z, state


def _pad(seqs, vocab, max_len):
    """Teacher forcing: inputs ``[BOS, w1 … wn]`` and targets ``[w1 … wn, EOS]``, padded (targets with IGNORE).

    The target after ``max_len`` words (an EOS of probability 1 by construction) is IGNORE as well.
    """
    import torch

    width = max(len(s) for s in seqs) + 1
    inputs = torch.full((len(seqs), width), vocab, dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) > max_len:
            raise ValueError(f"a sequence of {len(s)} words is longer than max_len={max_len}")
        if s:
            t = torch.as_tensor(s, dtype=torch.long)
            inputs[i, 1:len(s) + 1] = t
            targets[i, :len(s)] = t
        if len(s) < max_len:
            targets[i, len(s)] = EOS
    return inputs, targets


def sequence_logprob(lm, seqs, spec: OracleSpec, temperature=1.0):
    """Exact ``log p(w1 … wn, EOS)`` of each word sequence under ``lm``, by teacher forcing (float64 sums).

    The sum over the positions of ``log_softmax(logits / temperature)[target]``,
    the end of the sequence included (after ``max_len`` words it has
    probability 1).
    """
    import torch

    lm.eval()
    device = _device_of(lm)
    out = torch.zeros(len(seqs), dtype=torch.float64)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with torch.no_grad():
        for start in range(0, len(seqs), EVAL_BATCH):
            idx = order[start:start + EVAL_BATCH]
            inputs, targets = _pad([seqs[i] for i in idx], spec.vocab, spec.max_len)
            inputs, targets = inputs.to(device), targets.to(device)
            z, _ = _logits(lm, inputs)
            if temperature != 1.0:
                z = z / temperature
            tok = torch.log_softmax(z, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            tok = torch.where(targets != IGNORE, tok, 0.0)
            out[idx] = tok.double().sum(dim=1).cpu()
    return out


def _tokens(seqs):
    return sum(len(s) + 1 for s in seqs)  # the words and the end of each sequence


def _ppl(logprob, seqs):
    return math.exp(-float(logprob.sum()) / _tokens(seqs))


def sample(lm, n, spec: OracleSpec, generator, temperature=1.0):
    """``n`` word sequences drawn from ``lm`` (ancestral sampling) with a ``torch.Generator``.

    On the device of ``lm``; the uniform numbers come from ``generator`` (a
    CPU generator) whatever that device, so a model gives the same samples
    on every device up to the rounding of its probabilities.
    """
    import torch

    lm.eval()
    device = _device_of(lm)
    result = []
    with torch.no_grad():
        for start in range(0, n, SAMPLE_CHUNK):
            b = min(SAMPLE_CHUNK, n - start)
            tok = torch.full((b, 1), spec.vocab, dtype=torch.long, device=device)
            words = torch.zeros(b, spec.max_len, dtype=torch.long, device=device)
            length = torch.full((b,), -1, dtype=torch.long, device=device)  # -1 while the sequence goes on
            state = None
            for t in range(spec.max_len + 1):
                if t == spec.max_len:
                    length[length < 0] = t
                    break
                z, state = _logits(lm, tok, state, pos=t)
                if temperature != 1.0:
                    z = z / temperature
                # inverse CDF (torch.multinomial is several times slower on the CPU at this size)
                cdf = torch.cumsum(torch.softmax(z[:, 0], dim=-1), dim=-1)
                u = torch.rand(b, 1, generator=generator).to(device) * cdf[:, -1:]
                nxt = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=spec.vocab - 1)
                length[(nxt == EOS) & (length < 0)] = t
                if bool((length >= 0).all()):
                    break
                words[:, t] = nxt
                tok = nxt.unsqueeze(1)
            words, length = words.cpu(), length.tolist()
            result += [words[i, :length[i]].tolist() for i in range(b)]
    return result


# --------------------------------------------------------------------------- BLEU (NLTK's sentence_bleu, method1)


def _ngram_counts(seq, n):
    return Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))


def _closest_ref_length(lengths, hyp_len):
    return min(lengths, key=lambda r: (abs(r - hyp_len), r))  # ties: the shorter reference


def _bleu_from_counts(hyp, max_ref_count, ref_len, max_n):
    """BLEU of one hypothesis given the clipping counts (a function ngram -> max count over the references)."""
    if not hyp:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        counts = _ngram_counts(hyp, n)
        matched = sum(min(c, max_ref_count(g)) for g, c in counts.items())
        total = max(1, sum(counts.values()))
        if n == 1 and matched == 0:
            return 0.0  # NLTK: no unigram in common, no score
        p = matched / total if matched else 0.1 / total  # SmoothingFunction().method1, epsilon 0.1
        log_sum += math.log(p) / max_n
    bp = 1.0 if len(hyp) > ref_len else math.exp(1.0 - ref_len / len(hyp))
    return bp * math.exp(log_sum)


def sentence_bleu(hypothesis, references, max_n=4):
    """BLEU-``max_n`` of one token sequence against several, as NLTK's ``sentence_bleu`` with ``method1``.

    Uniform weights; n-gram counts clipped by their largest count in any
    reference; brevity penalty against the reference length closest to the
    hypothesis' (the shorter on a tie); a precision with no match becomes
    0.1 / (number of n-grams); no unigram match gives 0.

    Examples
    --------
    >>> round(sentence_bleu([1, 2, 3, 4, 5], [[1, 2, 3, 4, 6]]), 6)  # (4/5 · 3/4 · 2/3 · 1/2) ** (1/4)
    0.66874
    """
    maxima = [_ngram_counts(r, n) for r in references for n in range(1, max_n + 1)]
    max_count = Counter()
    for c in maxima:
        for g, k in c.items():
            max_count[g] = max(max_count[g], k)
    ref_len = _closest_ref_length([len(r) for r in references], len(hypothesis))
    return _bleu_from_counts(list(hypothesis), max_count.__getitem__, ref_len, max_n)


def bleu(hypotheses, references, max_n=4):
    """Mean :func:`sentence_bleu` of each hypothesis against all the references (the paper's BLEU-4)."""
    if not hypotheses or not references:
        raise ValueError("bleu needs at least one hypothesis and one reference")
    max_count = Counter()
    for r in references:
        for n in range(1, max_n + 1):
            for g, k in _ngram_counts(r, n).items():
                if k > max_count[g]:
                    max_count[g] = k
    lengths = sorted({len(r) for r in references})
    get = max_count.__getitem__
    return sum(_bleu_from_counts(list(h), get, _closest_ref_length(lengths, len(h)), max_n)
               for h in hypotheses) / len(hypotheses)


def self_bleu(samples, max_n=4):
    """Mean :func:`sentence_bleu` of each sample against all the others (Self-BLEU: lower is more diverse)."""
    if len(samples) < 2:
        raise ValueError("self_bleu needs at least two samples")
    # The two largest counts of every n-gram over the samples, and which sample holds the largest,
    # give the largest count over "all the others" for each sample without recounting.
    top = {}  # ngram -> [largest, its sample, second largest]
    per = []
    for i, s in enumerate(samples):
        counts = {}
        for n in range(1, max_n + 1):
            counts.update(_ngram_counts(s, n))
        per.append(counts)
        for g, k in counts.items():
            t = top.get(g)
            if t is None:
                top[g] = [k, i, 0]
            elif k > t[0]:
                top[g] = [k, i, t[0]]
            elif k > t[2]:
                t[2] = k
    lengths = Counter(len(s) for s in samples)
    total = 0.0
    for i, s in enumerate(samples):
        def max_other(g, i=i):
            t = top.get(g)
            if t is None:
                return 0
            return t[2] if t[1] == i else t[0]

        others = [n for n, c in lengths.items() if c > (1 if n == len(s) else 0)]
        total += _bleu_from_counts(list(s), max_other, _closest_ref_length(others, len(s)), max_n)
    return total / len(samples)


# --------------------------------------------------------------------------- perturbations (perturb_degen.py)


def repeat(tokens, rng):
    """A copy of ``tokens`` with the token at a random position repeated (``random.Random`` ``rng``)."""
    i = rng.randrange(len(tokens))
    return tokens[:i + 1] + tokens[i:]


def delete(tokens):
    """A copy of ``tokens`` without its last token (as ``perturb_degen.py`` does, whatever its help says)."""
    return tokens[:-1]


def substitute(tokens, rng, vocab):
    """A copy of ``tokens`` with a random position replaced by a word drawn uniformly from 1 … vocab-1."""
    out = list(tokens)
    word = rng.randrange(1, vocab)
    out[rng.randrange(len(out))] = word
    return out


def _perturbed_sets(seqs, setting, seed):
    """``{kind: [S_0, S_1, …, S_K]}``: every sequence corrupted ``k`` times, one chain per sequence."""
    spec, k_max = setting.oracle, setting.corruptions
    base = [s for s in seqs if k_max < len(s) <= spec.max_len - k_max][:setting.perturb]
    sets = {}
    for j, kind in enumerate(PERTURBATIONS):
        rng = random.Random(seed * 1000 + j)
        levels = [base]
        for _ in range(k_max):
            prev = levels[-1]
            if kind == "repeat":
                levels.append([repeat(s, rng) for s in prev])
            elif kind == "delete":
                levels.append([delete(s) for s in prev])
            else:
                levels.append([substitute(s, rng, spec.vocab) for s in prev])
        sets[kind] = levels
    return sets


# --------------------------------------------------------------------------- training


def _batches(lengths, batch, generator):
    """Shuffled batches of similar lengths: sort within chunks of 20 batches, then shuffle the batches."""
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    out = []
    for start in range(0, len(order), 20 * batch):
        chunk = sorted(order[start:start + 20 * batch], key=lambda i: lengths[i])
        out += [chunk[j:j + batch] for j in range(0, len(chunk), batch)]
    perm = torch.randperm(len(out), generator=generator).tolist()
    return [out[p] for p in perm]


def _loss_value(loss, z, y, gamma):
    import gammace_ref.torch as GT

    # compiled=False: eager is as fast here (measured: within 5 % per step at this size), without the
    # seconds each torch.compile costs on its first call.
    if loss.kind == "tailr":
        return GT.tailr(z, y, gamma, loss.threshold, ignore_index=IGNORE, reduction="mean", compiled=False)
    return GT.gamma_ce(z, y, gamma, ignore_index=IGNORE, reduction="mean", compiled=False)


def _nll(lm, seqs, spec):
    """Mean negative log-likelihood per token (nats)."""
    return -float(sequence_logprob(lm, seqs, spec).sum()) / _tokens(seqs)


def _train(loss, init_state, data, setting, seed, tick, device="cpu"):
    """Train from ``init_state`` with ``loss``; return the best model by validation NLL and its history.

    For a γ schedule, only the epochs from ``ramp_epochs`` on (γ at its end) are candidates, and
    the patience counts from there.
    """
    import torch

    spec = setting.oracle
    train, valid = data["train"], data["valid"]
    lm = _new_lm(spec)
    lm.load_state_dict(init_state)
    lm.to(device)
    params = list(lm.parameters())
    opt = torch.optim.Adam(params, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    torch.manual_seed(seed * 7919 + 17)  # dropout: the same stream for every loss of a seed
    order_gen = torch.Generator().manual_seed(seed * 7919 + 29)  # the same batches for every loss
    lengths = [len(s) for s in train]
    steps_per_epoch = math.ceil(len(train) / setting.batch)
    schedule = (gamma_schedule(0.0, loss.gamma, total_steps=setting.ramp_epochs * steps_per_epoch)
                if loss.kind == "schedule" else None)
    best, best_state, best_epoch, history, bad, step = math.inf, None, 0, [], 0, 0
    for epoch in range(1, setting.max_epochs + 1):
        lm.train()
        for idx in _batches(lengths, setting.batch, order_gen):
            inputs, targets = _pad([train[i] for i in idx], spec.vocab, spec.max_len)
            inputs, targets = inputs.to(device), targets.to(device)
            z, _ = _logits(lm, inputs, dropout=DROPOUT)
            gamma = schedule(step) if schedule is not None else loss.gamma
            value = _loss_value(loss, z.reshape(-1, spec.vocab), targets.reshape(-1), gamma)
            opt.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            opt.step()
            step += 1
        nll = _nll(lm, valid, spec)
        history.append(nll)
        if schedule is not None and epoch < min(setting.ramp_epochs, setting.max_epochs):
            pass  # a schedule's checkpoints compete once γ has reached its end (earlier ones are closer to MLE)
        elif nll < best:
            best, best_epoch, bad = nll, epoch, 0
            best_state = copy.deepcopy(lm.state_dict())
        else:
            bad += 1
        tick(epoch, nll)
        if bad >= setting.patience:
            break
    lm.load_state_dict(best_state)
    return lm.eval(), {"valid_nll": best, "best_epoch": best_epoch, "epochs": len(history),
                       "valid_history": history}


# --------------------------------------------------------------------------- evaluation


def _evaluate(lm, oracle, data, setting, seed, oracle_pert, temperature=1.0):
    """The paper's metrics for ``lm`` (the oracle itself when ``lm is oracle``), its logits divided by ``temperature``.

    ``oracle_pert=None``: no perturbation curves.
    """
    import torch

    spec = setting.oracle
    test = data["test"]
    gen = torch.Generator().manual_seed(seed * 7919 + 41)
    samples = sample(lm, setting.samples, spec, gen, temperature)
    refs = test[:setting.refs]
    lp_test = sequence_logprob(lm, test, spec, temperature)
    lp_oracle = sequence_logprob(oracle, samples, spec)
    out = {"ppl_oracle": _ppl(lp_oracle, samples), "ppl_test": _ppl(lp_test, test),
           "bleu4": bleu(samples, refs), "self_bleu4": self_bleu(samples[:setting.refs]),
           "sample_length": sum(map(len, samples)) / len(samples), "repeat_rate": _repeat_rate(samples)}
    if oracle_pert is not None:
        curves = {}
        for kind, levels in data["perturbed"].items():
            curve = []
            for k, seqs in enumerate(levels):
                lp_model = oracle_pert[kind][k] if lm is oracle else sequence_logprob(lm, seqs, spec)
                curve.append(float((lp_model - oracle_pert[kind][k]).mean()))
            curves[kind] = curve
        out["perturbation"] = curves
    return out


def _repeat_rate(seqs):
    """The share of words equal to the word before them (immediate repetitions)."""
    return sum(a == b for s in seqs for a, b in zip(s, s[1:])) / max(1, sum(len(s) - 1 for s in seqs if s))


def _data(oracle, setting, seed):
    import torch

    spec = setting.oracle
    gen = torch.Generator().manual_seed(seed * 7919 + 3)
    data = {name: sample(oracle, n, spec, gen)
            for name, n in (("train", setting.train), ("valid", setting.valid), ("test", setting.test))}
    # the perturbation study corrupts held-out sequences not used for PPL_test's first `refs` (BLEU references)
    data["perturbed"] = _perturbed_sets(data["test"][setting.refs:] or data["test"], setting, seed)
    return data


def _oracle_stats(oracle, data, setting):
    spec = setting.oracle
    lengths = [len(s) for s in data["train"]]
    mean = sum(lengths) / len(lengths)
    words = Counter(w for s in data["train"] for w in s)
    nll = _nll(oracle, data["test"], spec)
    return {"entropy_per_token": nll, "ppl": math.exp(nll), "length_mean": mean,
            "length_sd": math.sqrt(sum((n - mean) ** 2 for n in lengths) / max(len(lengths) - 1, 1)),
            "length_max": max(lengths), "word_types_in_train": len(words),
            "train_tokens": _tokens(data["train"])}


# --------------------------------------------------------------------------- tables and figures


def _mean_sd(values):
    vals = [v for v in values if not math.isnan(v)]
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, sd, len(vals)


def _fmt(values, digits=2, sign=False):
    if not values:
        return "–"
    mean, sd, n = _mean_sd(values)
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    if n == 1:
        return f.format(mean)
    # "±" kept with its mean (a no-break space), the sd free to wrap: wide tables fit the text column
    return f.format(mean) + "\u00a0± " + f"{{:.{digits}f}}".format(sd)


METRICS = (("ppl_oracle", "PPL_oracle ↓", 2), ("ppl_test", "PPL_test ↓", 2), ("bleu4", "BLEU-4 ↑", 3),
           ("self_bleu4", "Self-BLEU-4 ↓", 3), ("valid_nll", "valid NLL ↓", 3), ("epochs", "epochs (best)", 1))


def make_table(result, setting, losses=LOSSES):
    """The Markdown tables of :func:`run`: metrics, perturbation, paired differences with MLE."""
    runs, seeds = result.runs, sorted({r["seed"] for r in result.runs})
    names = [loss.name for loss in losses if any(r["loss"] == loss.name for r in runs)]
    k = setting.corruptions
    lines = ["| loss | " + " | ".join(h for _, h, _ in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    o = result.oracle
    lines.append("| *oracle (its own samples)* | " + " | ".join(
        [_fmt([r["ppl_oracle"] for r in o]), _fmt([r["ppl_test"] for r in o]), _fmt([r["bleu4"] for r in o], 3),
         _fmt([r["self_bleu4"] for r in o], 3), _fmt([r["entropy_per_token"] for r in o], 3), "–"]) + " |")
    for name in names:
        rs = [r for r in runs if r["loss"] == name]
        cells = [_fmt([r[key] for r in rs], d) for key, _, d in METRICS[:-1]]
        cells.append(_fmt([r["epochs"] for r in rs], 1) + " (" + _fmt([r["best_epoch"] for r in rs], 1) + ")")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for temp in sorted({t for r in rs for t in r.get("temperature", {})}, key=float, reverse=True):
            ts = [r["temperature"][temp] for r in rs if temp in r.get("temperature", {})]
            cells = [_fmt([t[key] for t in ts], d) for key, _, d in METRICS[:4]]
            lines.append(f"| *{name}, sampled at T = {temp}* | " + " | ".join(cells) + " | – | – |")
    lines += ["", f"Perturbation: mean log p_model − log p_oracle (nats per sequence) of held-out oracle "
                  f"sequences, clean (k = 0) and after k = {k} corruptions of each kind.", "",
              "| loss | clean | " + " | ".join(f"{p} ×{k}" for p in PERTURBATIONS) + " | "
              + " | ".join(f"{p}: rise" for p in PERTURBATIONS) + " |",
              "|---|---:|" + "---:|" * (2 * len(PERTURBATIONS))]
    for name in names:
        rs = [r for r in runs if r["loss"] == name]
        cells = [_fmt([r["perturbation"]["repeat"][0] for r in rs], 2)]
        cells += [_fmt([r["perturbation"][p][k] for r in rs], 2) for p in PERTURBATIONS]
        cells += [_fmt([r["perturbation"][p][k] - r["perturbation"][p][0] for r in rs], 2, sign=True)
                  for p in PERTURBATIONS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    base = names[0] if names else None
    others = names[1:]
    if base is not None and others:
        lines += ["", f"Paired differences with {base} (same seed: same data, initialisation and batches), "
                      "mean ± sd over seeds.", "",
                  "| loss | ΔPPL_oracle | ΔPPL_test | ΔBLEU-4 | ΔSelf-BLEU-4 | "
                  + " | ".join(f"Δ{p} rise" for p in PERTURBATIONS) + " |",
                  "|---|" + "---:|" * (4 + len(PERTURBATIONS))]
        ref = {r["seed"]: r for r in runs if r["loss"] == base}
        for name in others:
            rs = [r for r in runs if r["loss"] == name and r["seed"] in ref]
            cells = [_fmt([r[key] - ref[r["seed"]][key] for r in rs], d, sign=True)
                     for key, d in (("ppl_oracle", 2), ("ppl_test", 2), ("bleu4", 3), ("self_bleu4", 3))]
            for p in PERTURBATIONS:
                def rise(r, p=p):
                    return r["perturbation"][p][k] - r["perturbation"][p][0]
                cells.append(_fmt([rise(r) - rise(ref[r["seed"]]) for r in rs], 2, sign=True))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    st = result.oracle
    ent, _, _ = _mean_sd([s["entropy_per_token"] for s in st])
    ln, _, _ = _mean_sd([s["length_mean"] for s in st])
    lsd, _, _ = _mean_sd([s["length_sd"] for s in st])
    spec = setting.oracle
    on = "" if result.device == "cpu" else f", models on {result.device}"
    import torch

    lines += ["", f"Setting `{setting.name}`: oracle LSTM {spec.hidden} units, vocabulary {spec.vocab} "
                  f"(entropy {ent:.3f} nats/token, sequences of {ln:.1f} ± {lsd:.1f} words); "
                  f"{setting.train} training / {setting.valid} validation / {setting.test} test oracle "
                  f"sequences per seed; {setting.samples} model samples (PPL_oracle, BLEU-4 against "
                  f"{setting.refs} oracle samples), Self-BLEU-4 over {setting.refs}; Adam lr {LR:g}, dropout "
                  f"{DROPOUT}, clip {CLIP_NORM}, {setting.batch} sequences per batch, best validation NLL "
                  f"(patience {setting.patience}, at most {setting.max_epochs} epochs); mean ± sd over "
                  f"{len(seeds)} seed(s) {seeds}; torch {torch.__version__}, {torch.get_num_threads()} "
                  f"thread(s){on}. Oracle row: the oracle's own samples scored like a model's (its valid NLL "
                  f"column is its entropy per token). *{names[0] if names else ''}, sampled at T*: the same "
                  "model with its logits divided by T, for its samples and for PPL_test alike (a cooler "
                  "model, no training)."]
    return "\n".join(lines) + "\n"


def _plots(out, result, setting, losses):
    import numpy as np
    from matplotlib.figure import Figure

    from .demo import save_figure

    runs = result.runs
    names = [loss.name for loss in losses if any(r["loss"] == loss.name for r in runs)]
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    files = []

    def finish(fig, ax, name, xlabel, ylabel, title):
        """Labels, grid and legend of a one-panel figure, then ``out/name``."""
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out, name, files)

    # Quality against coverage.
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    ax = fig.subplots()
    for name in names:
        rs = [r for r in runs if r["loss"] == name]
        x, y = [r["ppl_test"] for r in rs], [r["ppl_oracle"] for r in rs]
        ax.scatter(x, y, s=14, alpha=0.45, color=colors[name])
        (mx, sx, _), (my, sy, _) = _mean_sd(x), _mean_sd(y)
        ax.errorbar([mx], [my], xerr=[sx], yerr=[sy], fmt="o", capsize=3, color=colors[name], label=name)
    base = [r for r in runs if r["loss"] == names[0] and r.get("temperature")]
    if base:
        temps = sorted({t for r in base for t in r["temperature"]}, key=float, reverse=True)
        xs = [_mean_sd([r["ppl_test"] for r in base])[0]]
        ys = [_mean_sd([r["ppl_oracle"] for r in base])[0]]
        for t in temps:
            xs.append(_mean_sd([r["temperature"][t]["ppl_test"] for r in base])[0])
            ys.append(_mean_sd([r["temperature"][t]["ppl_oracle"] for r in base])[0])
        ax.plot(xs, ys, ":", marker="s", ms=4, color=colors[names[0]],
                label=f"{names[0]} with logits / T, T = 1, " + ", ".join(temps))
        for t, x, y in zip(temps, xs[1:], ys[1:]):
            ax.annotate(f"T={t}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ox, oy = _mean_sd([r["ppl_test"] for r in result.oracle])[0], _mean_sd([r["ppl_oracle"] for r in result.oracle])[0]
    ax.scatter([ox], [oy], marker="*", s=160, color="black", label="oracle", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    finish(fig, ax, "lm-quality-coverage.png",
           "PPL_test: the model's perplexity on held-out oracle text (coverage) ↓",
           "PPL_oracle: the oracle's perplexity on the model's samples (quality) ↓",
           "Quality against coverage (points: seeds; bars: mean ± sd)")

    # Perturbation curves.
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, len(PERTURBATIONS), sharey=True)
    ks = np.arange(setting.corruptions + 1)
    for ax, kind in zip(axes, PERTURBATIONS):
        for name in names:
            curves = np.array([r["perturbation"][kind] for r in runs if r["loss"] == name])
            mean = curves.mean(axis=0)
            sd = curves.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
            ax.plot(ks, mean, marker="o", ms=3, color=colors[name], label=name,
                    ls="--" if name != names[0] and "TaiLr" not in name else "-")
            ax.fill_between(ks, mean - sd, mean + sd, color=colors[name], alpha=0.15)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(ks[::max(1, len(ks) // 11)])
        ax.set_title({"repeat": "repeat a random token", "delete": "delete the last word",
                      "substitute": "substitute a random word"}[kind])
        ax.set_xlabel("number of corruptions k")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("log p_model − log p_oracle (nats per sequence)")
    axes[0].legend(fontsize=8)
    fig.suptitle("How much more probability than the oracle each model gives corrupted oracle sequences "
                 "(mean ± sd over seeds)", fontsize=11)
    save_figure(fig, out, "lm-perturbation.png", files)

    # Validation NLL per epoch.
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for name in names:
        for j, r in enumerate(r for r in runs if r["loss"] == name):
            h = r["valid_history"]
            ax.plot(range(1, len(h) + 1), h, color=colors[name], alpha=0.8, lw=1.2, label=name if j == 0 else None)
            ax.plot([r["best_epoch"]], [r["valid_nll"]], "o", color=colors[name], ms=4)
    ent = _mean_sd([s["entropy_per_token"] for s in result.oracle])[0]
    ax.axhline(ent, color="black", ls=":", lw=1, label="oracle entropy")
    finish(fig, ax, "lm-training.png", "epoch", "validation NLL (nats per token)",
           "Early stopping: validation NLL per epoch (dots: the kept checkpoint)")
    return files


# --------------------------------------------------------------------------- the run


class _Progress:
    """One ``\\r`` line on a stream: elapsed time, a bar over the planned epochs, the current run."""

    def __init__(self, stream, total):
        self.stream, self.total, self.done, self.start = stream, total, 0, time.perf_counter()

    def show(self, text, advance=0):
        self.done = min(self.total, self.done + advance)
        if self.stream is None:
            return
        frac = self.done / self.total if self.total else 1.0
        bar = "█" * round(24 * frac) + "░" * (24 - round(24 * frac))
        line = f"[{time.perf_counter() - self.start:6.1f}s] {bar} {frac:4.0%} {text}"
        self.stream.write("\r" + line[:150].ljust(150))
        self.stream.flush()

    def log(self, text):
        if self.stream is not None:
            self.stream.write("\r" + text.ljust(150) + "\n")
            self.stream.flush()

    def close(self):
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


def run(setting: Setting = FULL, seeds=3, seed=0, out="demo-lm-out", losses=LOSSES, progress=sys.stderr,
        plots=True, device="cpu") -> LMResult:
    """Train every loss for ``seeds`` seeds on samples of the oracle; write the tables and figures to ``out``.

    The JSON and the tables are rewritten after every finished (seed, loss)
    run and the figures after every finished seed (and on a
    ``KeyboardInterrupt``: SIGINT), so a run that is stopped leaves its
    finished part (the table's first line says how many runs it
    holds when they are not all there).

    Parameters
    ----------
    setting : Setting
        Sizes: :data:`FULL` (the paper's data sizes), :data:`QUICK` (5 CPU-minutes:
        a smoke test) or your own (``dataclasses.replace(QUICK, ...)``).
    seeds : int >= 1
        Number of seeds ``seed, seed + 1, ...``.  A seed draws the training,
        validation and test samples from the (fixed) oracle and the models'
        initialisation, batches, dropout and sampling, shared by every loss.
    seed : int >= 0
        The first seed.
    out : str or path
        Directory for the files of :data:`FILES` (created if needed).
    losses : sequence of :class:`Loss`
        The losses compared (default :data:`LOSSES`); the first one is the
        baseline of the paired differences.
    progress : file or None
        Where the progress line goes (``None``: nowhere).
    plots : bool
        Write the PNG figures (needs matplotlib).
    device : str or torch.device
        Where the oracle and the models live, train, sample and are scored
        (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).  The oracle's data (the
        training, validation and test sequences and their corruptions) are
        sampled on the CPU whatever the device, so they are the same
        everywhere; the models' numbers differ across devices by rounding.

    Returns
    -------
    LMResult
        ``runs`` (one dict per seed × loss), ``oracle`` (one per seed),
        ``table`` (Markdown), ``files`` written and ``seconds`` taken.
    """
    if not isinstance(setting, Setting):
        raise TypeError(f"setting must be a Setting, got {type(setting).__name__}")
    for name, v, low in (("seeds", seeds, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    if not losses:
        raise ValueError("losses must not be empty")
    # before any work or file: a missing torch or matplotlib is a ModuleNotFoundError naming it
    # (`gammace-ref demo lm` turns it into one line naming the extra to install, exit status 2)
    import torch
    if plots:
        importlib.import_module("matplotlib")
    device = _check_device(device)
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    result = LMResult(device=str(device))
    spec = setting.oracle
    planned = seeds * len(losses)
    bar = _Progress(progress, planned * setting.max_epochs)
    bar.show("building the oracle")
    oracle_cpu = make_oracle(spec)  # samples the data: the same on every device
    oracle = oracle_cpu if device.type == "cpu" else copy.deepcopy(oracle_cpu).to(device)

    def save(figures):
        result.seconds = time.perf_counter() - start
        result.table = make_table(result, setting, losses)
        result.files = _write(out, result, setting, seeds, seed, losses, planned, device)
        if figures:
            result.files += _plots(out, result, setting, losses)

    try:
        for s in range(seed, seed + seeds):
            bar.show(f"seed {s}: sampling {setting.train + setting.valid + setting.test} oracle sequences")
            data = _data(oracle_cpu, setting, s)
            oracle_pert = {kind: [sequence_logprob(oracle, seqs, spec) for seqs in levels]
                           for kind, levels in data["perturbed"].items()}
            stats = _oracle_stats(oracle, data, setting)
            stats.update(_evaluate(oracle, oracle, data, setting, s, oracle_pert), seed=s)
            result.oracle.append(stats)
            bar.log(f"seed {s}: oracle entropy {stats['entropy_per_token']:.3f} nats/token (PPL {stats['ppl']:.2f}), "
                    f"{stats['length_mean']:.1f} ± {stats['length_sd']:.1f} words, BLEU-4 {stats['bleu4']:.3f}, "
                    f"Self-BLEU-4 {stats['self_bleu4']:.3f}")
            with torch.random.fork_rng():
                torch.manual_seed(s * 7919 + 11)
                init = copy.deepcopy(_new_lm(spec).state_dict())  # every loss of this seed starts here
            for loss in losses:
                t0 = time.perf_counter()

                def tick(epoch, nll, loss=loss, s=s):
                    bar.show(f"seed {s} {loss.name}: epoch {epoch} valid NLL {nll:.3f}", advance=1)

                bar.show(f"seed {s} {loss.name}: epoch 1")
                lm, info = _train(loss, init, data, setting, s, tick, device)
                bar.show(f"seed {s} {loss.name}: evaluating", advance=setting.max_epochs - info["epochs"])
                metrics = _evaluate(lm, oracle, data, setting, s, oracle_pert)
                if loss == losses[0]:  # the baseline, cooled: logits / T
                    metrics["temperature"] = {}
                    for temp in setting.temperatures:
                        bar.show(f"seed {s} {loss.name}: evaluating at temperature {temp:g}")
                        metrics["temperature"][f"{temp:g}"] = _evaluate(lm, oracle, data, setting, s, None, temp)
                r = {"seed": s, "loss": loss.name, "kind": loss.kind, "gamma": loss.gamma, "threshold": loss.threshold,
                     **info, **metrics, "seconds": time.perf_counter() - t0}
                result.runs.append(r)
                bar.log(f"seed {s} {loss.name:20} PPL_oracle {r['ppl_oracle']:7.2f} PPL_test {r['ppl_test']:7.2f} "
                        f"BLEU-4 {r['bleu4']:.3f} Self-BLEU-4 {r['self_bleu4']:.3f} epochs {r['epochs']} "
                        f"({r['seconds']:.0f}s)")
                last = s == seed + seeds - 1 and loss == losses[-1]
                if not last:  # the finished part, in case the run is stopped (the last one is saved below)
                    save(plots and loss == losses[-1])
    except KeyboardInterrupt:  # stopped (Ctrl-C, `timeout -s INT`): the finished runs, figures included
        bar.close()
        if result.runs:
            save(plots)
        raise
    bar.close()
    save(plots)
    return result


def _replace_file(path, text):
    """Write ``text`` to ``path`` through a temporary file: a run stopped while writing leaves the old file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _write(out, result, setting, seeds, seed, losses, planned, device):
    """Write ``lm-table.md`` and ``lm-results.json`` for the runs finished so far; their paths."""
    import torch

    done = len(result.runs)
    partial = (f"**Partial result: {done} of {planned} runs (seed × loss) finished** (the run was stopped or "
               "is still going).\n\n" if done < planned else "")
    table = os.path.join(out, "lm-table.md")
    _replace_file(table, f"<!-- generated by: gammace-ref demo lm {_argline(setting, seeds, seed, out, device)} "
                         f"-->\n\n{partial}{result.table}")
    data = {"setting": asdict(setting), "seeds": list(range(seed, seed + seeds)),
            "losses": [asdict(loss) for loss in losses],
            "training": {"lr": LR, "dropout": DROPOUT, "clip_norm": CLIP_NORM},
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
            "runs_planned": planned, "runs_finished": done, "seconds": result.seconds,
            "oracle": result.oracle, "runs": result.runs}
    path = os.path.join(out, "lm-results.json")
    _replace_file(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return [table, path]


def _argline(setting, seeds, seed, out, device="cpu"):
    quick = "--quick " if setting == QUICK else ""
    custom = "" if setting in (QUICK, FULL) else f"(custom setting {setting.name!r}) "
    on = "" if str(device) == "cpu" else f" --device {device}"
    return f"{quick}{custom}--seeds {seeds} --seed {seed} --out {out}{on}"
