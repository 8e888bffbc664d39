# A plain PyTorch loop (a LightningModule's training_step is the same three lines): GammaCELoss / TaiLrLoss
# where nn.CrossEntropyLoss was, or the hidden-states function where the logits would not fit.
import torch

import gammace_ref
import gammace_ref.torch as GT

vocab, width = 1000, 32
embed, head = torch.nn.Embedding(vocab, width), torch.nn.Linear(width, vocab, bias=False)
params = list(embed.parameters()) + list(head.parameters())
opt = torch.optim.AdamW(params, lr=1e-2)
tokens = torch.randint(0, vocab, (16, 33))
inputs, labels = tokens[:, :-1], tokens[:, 1:].clone()  # next-token prediction: the shift
labels[:, -3:] = -100  # padding: ignore_index=-100, as nn.CrossEntropyLoss

criterion = GT.TaiLrLoss(gamma=0.0, threshold=0.3)  # nn.CrossEntropyLoss's arguments and layout
schedule = gammace_ref.gamma_schedule(0.0, 0.1, total_steps=10)
for step in range(10):
    criterion.gamma = schedule(step)
    logits = head(embed(inputs))  # (batch, seq, vocab)
    loss = criterion(logits.flatten(0, 1), labels.flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()

# The same loss from the hidden states, chunk by chunk (no batch × seq × vocab logits), with its statistics.
hidden = embed(inputs).flatten(0, 1)
loss, stats = GT.linear_tailr(hidden, head.weight, labels.flatten(), 0.1, 0.3, ignore_index=-100, return_stats=True)
loss.backward()
print(f"loss {float(loss.detach()):.3f}", {k: round(v, 3) for k, v in stats.means().items()})
