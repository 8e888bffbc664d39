"""gammace_ref.integrations.hf: transformers' Trainer with γ-CE / TaiLr, on tiny randomly initialised models.

At γ = 0, CausalLMLoss must give the update of transformers' own causal-LM
loss (label shift, -100, num_items_in_batch), with gradient accumulation on
and off, through the logits and through the hidden-states path.
"""

import pytest

transformers = pytest.importorskip("transformers", reason="transformers is not installed (the hf extra)")
torch = pytest.importorskip("torch")

import gammace_ref  # noqa: E402
from gammace_ref.integrations import hf  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")]

V, T = 97, 12


def tiny(kind):
    torch.manual_seed(0)
    if kind == "gpt2":  # tied lm_head, no dropout (the updates must be deterministic)
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                   tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg)


class Tokens(torch.utils.data.Dataset):
    """Random sequences, right-padded by a varying number of -100 labels (so that num_items_in_batch matters)."""

    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, V, (n, T), generator=g)
        self.pad = [int(k) for k in torch.randint(0, T // 2, (n,), generator=g)]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        mask = torch.ones(T, dtype=torch.long)
        if self.pad[i]:
            labels[-self.pad[i]:] = -100
            mask[-self.pad[i]:] = 0
        return {"input_ids": self.ids[i], "attention_mask": mask, "labels": labels}


def train(tmp_path, kind, loss=None, *, bs=4, ga=1, steps=1, n=4, eval_steps=None, callback=None, **extra):
    model = tiny(kind)
    loss_fn = loss(model) if callable(loss) and not isinstance(loss, hf.CausalLMLoss) else loss
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=bs, per_device_eval_batch_size=3,
        gradient_accumulation_steps=ga, max_steps=steps, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=0.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        data_seed=0, disable_tqdm=True, eval_strategy="steps" if eval_steps else "no", eval_steps=eval_steps, **extra)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(n), compute_loss_func=loss_fn,
                                   eval_dataset=Tokens(5, seed=1) if eval_steps else None)
    if callback is not None:
        callback(loss_fn).install(trainer)
    trainer.train()
    return model, trainer


def update_gap(model, ref, start):
    """max |θ - θ_ref| over the parameters, relative to the largest update max |θ_ref - θ_0|."""
    p, r, s = ({k: v.detach() for k, v in m.named_parameters()} for m in (model, ref, start))
    gap = max(float((p[k] - r[k]).abs().max()) for k in r)
    step = max(float((r[k] - s[k]).abs().max()) for k in r)
    return gap / step, step


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_gamma_zero_gives_the_update_of_transformers_own_loss(tmp_path, kind):
    """Accumulation off (4 × 1) and on (2 × 2), logits and hidden-states paths: the update of ForCausalLMLoss."""
    start = tiny(kind)
    gaps, first = {}, None
    for bs, ga in ((4, 1), (2, 2)):
        ref, _ = train(tmp_path, kind, None, bs=bs, ga=ga)  # transformers' own loss
        for path, loss in (("logits", hf.CausalLMLoss(0.0, compiled=False)),
                           ("hidden", lambda m: hf.CausalLMLoss(0.0, model=m, compiled=False))):
            model, _ = train(tmp_path, kind, loss, bs=bs, ga=ga)
            gaps[(bs, ga, path)] = update_gap(model, ref, start)
        if ga == 2:
            gaps[("accumulation", "vs", "none")] = update_gap(ref, first, start)
        first = ref
    print({k: f"{g:.1e} of a step of {s:.2e}" for k, (g, s) in gaps.items()})
    for key, (gap, step) in gaps.items():
        assert step > 1e-3 and gap <= 1e-5, (key, gap, step)


def test_tailr_trains_with_the_hidden_states_path_the_schedule_and_the_statistics(tmp_path):
    """Compiled (the default), with evaluation: γ from the schedule, the statistics in the logs."""
    schedule = gammace_ref.gamma_schedule(0.0, 0.3, total_steps=3)
    state = {}

    def make_loss(model):
        state["loss"] = hf.CausalLMLoss(0.0, 0.2, model=model, chunk_size=16)
        return state["loss"]

    before = {k: v.detach() for k, v in tiny("gpt2").named_parameters()}
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    model, trainer = train(tmp_path, "gpt2", make_loss, bs=2, ga=2, steps=4, n=16, eval_steps=2,
                           callback=lambda loss: hf.GammaCallback(loss, schedule))
    # compiled chunks: one graph with the gradient (training), one without (evaluation), one for the statistics
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs <= 3
    assert isinstance(model.lm_head, hf.HiddenStatesHead)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    logs = [h for h in trainer.state.log_history if "loss" in h]
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [h["gamma"] for h in logs] == [schedule(s) for s in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    for h in logs:
        assert 0 < h["nll"] < 10 and 0 < h["mean_weight"] <= 1 and 0 <= h["clipped_fraction"] <= 1
    # γ = 0: every weight 1.  (The logged loss is not the NLL here: for GPT-2, whose class name does not say
    # "ForCausalLM", transformers counts num_items_in_batch over the unshifted labels, one token too many per row.)
    assert logs[0]["mean_weight"] == 1.0
    assert logs[-1]["clipped_fraction"] > 0  # random init at γ = 0.3: p ≈ 1/97, w < b
    assert len(evals) == 2 and all(0 < h["eval_nll"] < 10 for h in evals)
    assert any(float((p.detach() - before[k]).abs().max()) > 0 for k, p in model.named_parameters())
    # back to a plain head for generation
    hf.restore_lm_head(model)
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.transformer.wte.weight
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
    assert out.shape == (1, 5)


def test_refusals():
    cfg = transformers.Gemma2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    gemma = transformers.Gemma2ForCausalLM(cfg)
    with pytest.raises(ValueError, match="final_logit_softcapping = 30.0: this model transforms its logits"):
        hf.CausalLMLoss(0.1, model=gemma)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 1.5"):
        hf.CausalLMLoss(1.5)
    loss = hf.CausalLMLoss(0.1)
    with pytest.raises(ValueError, match="labels is None"):
        loss({"logits": torch.zeros(1, 3, V)}, None)
    model = tiny("llama")
    loss = hf.CausalLMLoss(0.1, model=model)
    hf.restore_lm_head(model)
    with pytest.raises(ValueError, match="was the lm_head put back"):
        loss({"logits": torch.zeros(1, 3, V)}, torch.zeros(1, 3, dtype=torch.long))
