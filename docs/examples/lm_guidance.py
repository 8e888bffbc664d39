"""From random initialisation at a 32k vocabulary: held-out cross-entropy under CE, γ-CE and TaiLr.

    python docs/examples/lm_guidance.py --out docs/examples   # CPU; --device cuda on a GPU

No download: the text is the Python standard library of the running
interpreter (its ``.py`` files, site-packages and tests left out: the
corpus, and so the numbers, follow the Python version), split into
words, numbers and punctuation; the 31999 most frequent tokens and ``<unk>``
make the 32000-token vocabulary; whole files go to training or (1 in 20,
by a hash of the file name) to the held-out set.  A small Llama
(transformers' ``LlamaForCausalLM``, random initialisation: 2 layers, width
128, 4 heads, untied 32000 × 128 embeddings and lm_head) trains for
``--steps`` optimizer steps of 16 sequences × 128 tokens with AdamW (lr 1e-3,
no warm-up) through ``transformers.Trainer`` and
:class:`gammace_ref.integrations.hf.CausalLMLoss` on the hidden-states path,
once per loss, from the same initialisation and batches; every
``--eval-every`` steps the :class:`~gammace_ref.integrations.hf.GammaCallback`
logs the held-out NLL (``eval_nll``: the cross-entropy, whatever the loss
trains).  Writes ``lm-guidance.json`` and ``lm-guidance-table.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import sys
import sysconfig
import time
import zlib

import torch
import transformers

from gammace_ref.integrations import hf

VOCAB, SEQ = 32000, 128
TOKEN = re.compile(r"[A-Za-z_]+|\d+|[^\sA-Za-z_\d]")
# (label, gamma, threshold): threshold None is γ-CE (γ = 0: cross-entropy)
LOSSES = [("CE", 0.0, None), ("γ-CE, γ = 0.1", 0.1, None), ("TaiLr, γ = 0.1, b = 0.3", 0.1, 0.3),
          ("γ-CE, γ = 1e-7", 1e-7, None), ("γ-CE, γ = 0.5", 0.5, None)]


def corpus():
    """``(train_ids, heldout_ids)``: 1-d int64 tensors of the standard library's tokens."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not {"site-packages", "test", "tests", "idlelib", "lib2to3"} & set(p.relative_to(root).parts))
    streams = {"train": [], "heldout": []}
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")
        split = "heldout" if zlib.crc32(str(p.relative_to(root)).encode()) % 20 == 0 else "train"
        streams[split].extend(TOKEN.findall(text))
    counts = collections.Counter(streams["train"])
    index = {w: i + 1 for i, (w, _) in enumerate(counts.most_common(VOCAB - 1))}  # 0 is <unk>
    return tuple(torch.tensor([index.get(w, 0) for w in streams[s]], dtype=torch.long) for s in ("train", "heldout"))


class Blocks(torch.utils.data.Dataset):
    def __init__(self, ids, n):
        self.ids, self.n = ids, min(n, len(ids) // SEQ)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = self.ids[i * SEQ:(i + 1) * SEQ]
        return {"input_ids": x, "labels": x}


def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
                                   tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg)


def run(label, gamma, threshold, train, heldout, args):
    m = model()
    loss = hf.CausalLMLoss(gamma, threshold, model=m)
    targs = transformers.TrainingArguments(
        output_dir=str(args.out / "lm-guidance-runs"), per_device_train_batch_size=16, per_device_eval_batch_size=32,
        max_steps=args.steps, learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0,
        eval_strategy="steps", eval_steps=args.eval_every, logging_steps=args.eval_every, save_strategy="no",
        report_to=[], use_cpu=args.device == "cpu", seed=0, data_seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=m, args=targs, train_dataset=train, eval_dataset=heldout,
                                   compute_loss_func=loss)
    hf.GammaCallback(loss).install(trainer)
    start = {k: v for k, v in trainer.evaluate().items() if k in ("eval_nll", "eval_mean_weight")}
    t0 = time.time()
    trainer.train()
    history = [dict(step=0, **start)] + [
        {"step": h["step"], **{k: h[k] for k in ("eval_nll", "eval_mean_weight", "eval_clipped_fraction") if k in h}}
        for h in trainer.state.log_history if "eval_nll" in h]
    train_logs = [{k: h.get(k) for k in ("step", "loss", "nll", "mean_weight", "clipped_fraction")}
                  for h in trainer.state.log_history if "nll" in h]
    print(f"{label}: {history[-1]} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return {"label": label, "gamma": gamma, "threshold": threshold, "heldout": history, "train": train_logs}


def table(runs):
    steps = [h["step"] for h in runs[0]["heldout"]]
    lines = ["| loss | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|" + "---:|" * len(steps)]
    for r in runs:
        lines.append(f"| {r['label']} | " + " | ".join(f"{h['eval_nll']:.2f}" for h in r["heldout"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--heldout-blocks", type=int, default=64, help="held-out sequences of 128 tokens")
    p.add_argument("--only", nargs="*", help="labels of LOSSES to run")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the Trainer runs")
    args = p.parse_args(argv)
    train_ids, heldout_ids = corpus()
    print(f"tokens: {len(train_ids)} train, {len(heldout_ids)} held-out; <unk> {float((train_ids == 0).float().mean()):.3f}",
          file=sys.stderr)
    train, heldout = Blocks(train_ids, args.steps * 16), Blocks(heldout_ids, args.heldout_blocks)
    runs = []
    for loss in LOSSES:
        if args.only and loss[0] not in args.only:
            continue
        runs.append(run(*loss, train, heldout, args))
        write(runs, args, len(train_ids))  # after every run: a stopped run keeps what it measured
    print(table(runs))


def write(runs, args, train_tokens):
    meta = {"vocab": VOCAB, "seq": SEQ, "train_tokens": train_tokens, "heldout_tokens": args.heldout_blocks * SEQ,
            "steps": args.steps, "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
            "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                         "transformers": transformers.__version__}}
    (args.out / "lm-guidance.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
    (args.out / "lm-guidance-table.md").write_text(table(runs))


if __name__ == "__main__":
    main()
