"""Thin integrations with the trainers people use; each module imports its library, nothing here is imported by
``import gammace_ref``.

* :mod:`gammace_ref.integrations.hf`: Hugging Face transformers' ``Trainer``
  (``pip install "gammace_ref[hf]"``): a ``compute_loss_func`` for causal
  language models (label shift, ``-100``, ``num_items_in_batch``), the
  hidden-states path on the model's ``lm_head``, and a ``TrainerCallback``
  for the γ schedule and the statistics.

A plain PyTorch loop or PyTorch Lightning needs nothing but
``gammace_ref.torch.GammaCELoss`` / ``TaiLrLoss``; JAX with optax needs
``gammace_ref.jax``.  See docs/integrations.md.
"""
