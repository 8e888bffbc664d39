"""γ-CE and TaiLr in Hugging Face transformers' ``Trainer``, for causal language models.

>>> from gammace_ref.integrations import hf                      # doctest: +SKIP
>>> loss = hf.CausalLMLoss(gamma=0.1, threshold=0.3)             # TaiLr; threshold=None is γ-CE  # doctest: +SKIP
>>> trainer = Trainer(model, args, train_dataset=ds, compute_loss_func=loss)  # doctest: +SKIP
>>> hf.GammaCallback(loss, schedule=gamma_schedule(0.0, 0.1, total_steps=1000)).install(trainer)  # doctest: +SKIP

:class:`CausalLMLoss` is a ``compute_loss_func``: it does what transformers'
own causal-LM loss (``ForCausalLMLoss``) does -- the labels shifted one
position left, ``-100`` ignored, and with ``num_items_in_batch`` (the counted
tokens of the whole accumulated batch, which ``Trainer`` passes) the sum
divided by it, so that gradient accumulation gives the update of one large
batch -- with γ-CE or TaiLr in place of the cross-entropy.

``CausalLMLoss(..., model=model)`` runs the hidden-states path
(:func:`gammace_ref.torch.linear_gamma_ce`): :func:`use_hidden_states`
replaces the model's ``lm_head`` by a :class:`HiddenStatesHead` holding the
same parameters (state dict, tied embeddings and optimizer unchanged) whose
forward returns the hidden states, and the loss multiplies them by the
weight chunk by chunk: the ``batch × sequence × vocabulary`` logits never
exist.  The model's ``logits`` output then holds the hidden states (for
``compute_metrics``, too); :func:`restore_lm_head` puts an ``nn.Linear``
back (before ``generate``).  Models that transform the logits after the
``lm_head`` (soft-capping, scaling) are refused.

:class:`GammaCallback` sets γ from a schedule (``step -> γ``, e.g.
:func:`gammace_ref.gamma_schedule`) at each optimizer step and adds to the
logs the statistics the loss gathered since the last log
(:mod:`gammace_ref.stats`): ``nll`` (the cross-entropy, comparable across γ),
``mean_weight`` (mean gradient weight ``w``, TaiLr's ``clip(w, b, 1)``),
``clipped_fraction`` (fraction of tokens with ``w < b``), ``gamma``;
``eval_nll``, ... on evaluation.  ``install(trainer)`` puts it first among the callbacks, so
that the printer and the loggers (TensorBoard, W&B, ...) see those entries.
The statistics are this process's (not reduced across data-parallel ranks).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import transformers

from .. import _validation
from .. import torch as GT
from ..stats import Stats, loss_stats

__all__ = ["CausalLMLoss", "GammaCallback", "HiddenStatesHead", "restore_lm_head", "use_hidden_states"]

IGNORE_INDEX = -100

#: Config attributes of models whose logits are not ``lm_head(hidden)``: (name, the value that changes nothing).
LOGIT_TRANSFORMS = (("final_logit_softcapping", None), ("logit_softcap", None), ("logit_scale", 1.0),
                    ("logits_scaling", 1.0), ("output_multiplier", 1.0))


class HiddenStatesHead(torch.nn.Module):
    """Stands in for a model's ``lm_head`` (an ``nn.Linear``): the same ``weight``/``bias``, ``forward`` = identity."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, hidden_states):
        return hidden_states

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _logit_transform(config):
    for cfg in {id(c): c for c in (config, getattr(config, "get_text_config", lambda: config)())}.values():
        for name, neutral in LOGIT_TRANSFORMS:
            value = getattr(cfg, name, neutral)
            if value is not None and value != neutral:
                return name, value
    return None


def use_hidden_states(model) -> HiddenStatesHead:
    """Replace ``model``'s ``lm_head`` by a :class:`HiddenStatesHead` (in place; done once) and return it."""
    head = model.get_output_embeddings()
    if isinstance(head, HiddenStatesHead):
        return head
    if type(head) is not torch.nn.Linear:
        raise TypeError(f"model's output embeddings must be a torch.nn.Linear for the hidden-states path, got "
                        f"{_validation.describe(head)}")
    found = _logit_transform(model.config)
    if found:
        raise ValueError(f"model.config.{found[0]} = {found[1]!r}: this model transforms its logits after the lm_head, "
                         "so its loss is not that of lm_head(hidden states); use CausalLMLoss without model=")
    new = HiddenStatesHead(head)
    model.set_output_embeddings(new)
    return new


def restore_lm_head(model) -> torch.nn.Linear:
    """Put an ``nn.Linear`` with the same parameters back in place of a :class:`HiddenStatesHead`."""
    head = model.get_output_embeddings()
    if not isinstance(head, HiddenStatesHead):
        return head
    linear = torch.nn.Linear(head.in_features, head.out_features, bias=head.bias is not None, device="meta")
    linear.weight = head.weight
    linear.bias = head.bias
    model.set_output_embeddings(linear)
    return linear


class CausalLMLoss:
    """A ``compute_loss_func`` for ``Trainer``: γ-CE (``threshold=None``) or TaiLr on next-token prediction.

    ``gamma`` (settable; :class:`GammaCallback` sets it from a schedule),
    ``threshold`` (TaiLr's ``b``), ``label_smoothing``; ``model``: run the
    hidden-states path on its ``lm_head`` (:func:`use_hidden_states`), with
    ``memory_budget``/``chunk_size`` as in :mod:`gammace_ref.linear`;
    ``compiled``: the compiled core (``gammace_ref.torch``); ``stats``:
    gather the :class:`~gammace_ref.stats.Stats` for :class:`GammaCallback`
    (free on the hidden-states path, one more pass over the logits otherwise).
    """

    def __init__(self, gamma, threshold=None, *, label_smoothing=0.0, model=None, memory_budget=None,
                 chunk_size=None, compiled=True, stats=True):
        self.gamma = gamma
        self.threshold = None if threshold is None else _validation.unit_interval("threshold", threshold)
        self.label_smoothing = _validation.smoothing(label_smoothing)
        self.sizes = dict(memory_budget=memory_budget, chunk_size=chunk_size)
        self.compiled, self.stats = compiled, stats
        self.head = None if model is None else use_hidden_states(model)
        self._gathered = {"train": None, "eval": None}

    @property
    def gamma(self):
        return self._gamma

    @gamma.setter
    def gamma(self, value):
        self._gamma = _validation.unit_interval("gamma", value)

    def __call__(self, outputs, labels, num_items_in_batch=None):
        if labels is None:
            raise ValueError("labels is None: CausalLMLoss needs the batch's labels (Trainer passes them when the "
                             "dataset or collator gives a 'labels' column)")
        x = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        # Tokens < n predict n: shift left, the last position predicts nothing (as ForCausalLMLoss).
        targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).to(x.device)
        kw = dict(reduction="mean" if num_items_in_batch is None else "sum", ignore_index=IGNORE_INDEX,
                  label_smoothing=self.label_smoothing, compiled=self.compiled)
        args = (self.gamma,) if self.threshold is None else (self.gamma, self.threshold)
        st = None
        if self.head is not None:
            if x.shape[-1] != self.head.in_features:
                raise ValueError(f"the model's logits output has {x.shape[-1]} features, not the lm_head's "
                                 f"{self.head.in_features} inputs: was the lm_head put back (restore_lm_head)?")
            fn = GT.linear_gamma_ce if self.threshold is None else GT.linear_tailr
            loss, st = fn(x.reshape(-1, x.shape[-1]), self.head.weight, targets, *args, bias=self.head.bias,
                          return_stats=True, **self.sizes, **kw)
        else:
            logits = x.reshape(-1, x.shape[-1])
            loss = (GT.gamma_ce if self.threshold is None else GT.tailr)(logits, targets, *args, **kw)
            if self.stats:
                st = loss_stats(logits.detach(), targets, *args, ignore_index=IGNORE_INDEX)
        if num_items_in_batch is not None:
            if torch.is_tensor(num_items_in_batch):
                num_items_in_batch = num_items_in_batch.to(loss.device)
            loss = loss / num_items_in_batch
        if self.stats and st is not None:
            key = "train" if torch.is_grad_enabled() else "eval"  # Trainer evaluates under no_grad
            st = Stats(*(v.detach() for v in st))
            self._gathered[key] = st if self._gathered[key] is None else self._gathered[key] + st
        return loss

    def pop_stats(self, which="train") -> Stats | None:
        """The :class:`~gammace_ref.stats.Stats` gathered since the last call (``"train"`` or ``"eval"``), or ``None``."""
        st, self._gathered[which] = self._gathered[which], None
        return st


class GammaCallback(transformers.TrainerCallback):
    """Drives ``loss.gamma`` from ``schedule(step)`` and logs γ and the loss's statistics (see the module)."""

    def __init__(self, loss: CausalLMLoss, schedule=None):
        self.loss, self.schedule = loss, schedule

    def install(self, trainer):
        """Put this callback first in ``trainer``'s (before the printer and the loggers); returns ``trainer``."""
        trainer.callback_handler.callbacks.insert(0, self)
        return trainer

    def on_step_begin(self, args, state, control, **kwargs):
        if self.schedule is not None:
            self.loss.gamma = self.schedule(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        which = "eval" if any(k.startswith("eval_") for k in logs) else "train" if "loss" in logs else None
        if which is None:
            return
        prefix = "eval_" if which == "eval" else ""
        extra = {f"{prefix}gamma": self.loss.gamma}
        st = self.loss.pop_stats(which)
        if st is not None:
            m = st.means()
            extra.update({f"{prefix}nll": m["nll"], f"{prefix}mean_weight": m["weight"],
                          f"{prefix}clipped_fraction": m["clipped"]})
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)  # Trainer stored a copy of these logs before the callbacks ran
