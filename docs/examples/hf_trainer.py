# TaiLr in transformers' Trainer: the hidden-states path on the lm_head, a γ schedule, the statistics in the logs.
import tempfile

import torch
import transformers

import gammace_ref
from gammace_ref.integrations import hf

config = transformers.LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2)
model = transformers.LlamaForCausalLM(config)  # random initialisation; from_pretrained(...) for fine-tuning
tokens = torch.randint(0, 1000, (64, 32))
train = [{"input_ids": t, "labels": t} for t in tokens]  # -100 in labels: not counted (padding)

loss = hf.CausalLMLoss(gamma=0.0, threshold=0.3, model=model)  # TaiLr; model=: no batch × seq × vocab logits
args = transformers.TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=4, per_device_train_batch_size=8,
                                      gradient_accumulation_steps=2, logging_steps=1, report_to=[], use_cpu=True)
trainer = transformers.Trainer(model=model, args=args, train_dataset=train, compute_loss_func=loss)
hf.GammaCallback(loss, schedule=gammace_ref.gamma_schedule(0.0, 0.1, total_steps=4)).install(trainer)
trainer.train()
for log in trainer.state.log_history[:-1]:
    print({k: round(log[k], 3) for k in ("step", "loss", "gamma", "nll", "mean_weight", "clipped_fraction")})
hf.restore_lm_head(model)  # an nn.Linear again, for model.generate(...)
