# JAX + optax (no Flax needed): a γ-CE / TaiLr training step under jit, γ a traced argument (no recompilation
# when the schedule moves it), the loss from the hidden states (gammace_ref.jax.linear_tailr: no logits array).
import jax
import jax.numpy as jnp
import optax

import gammace_ref
import gammace_ref.jax as GJ

vocab, width = 1000, 32
key_e, key_w, key_t = jax.random.split(jax.random.key(0), 3)
params = {"embed": 0.1 * jax.random.normal(key_e, (vocab, width)),
          "head": 0.1 * jax.random.normal(key_w, (vocab, width))}
tokens = jax.random.randint(key_t, (16, 33), 0, vocab)
inputs, labels = tokens[:, :-1], tokens[:, 1:]
mask = jnp.arange(32) < 29  # the last 3 positions are padding: where=False counts for nothing

opt = optax.adamw(1e-2)
state = opt.init(params)


def loss_fn(params, gamma):
    hidden = params["embed"][inputs]  # (batch, seq, width): a model's last hidden states
    return GJ.linear_tailr(hidden, params["head"], labels, gamma, 0.3, where=jnp.broadcast_to(mask, labels.shape))


@jax.jit
def train_step(params, state, gamma):
    loss, grads = jax.value_and_grad(loss_fn)(params, gamma)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss


schedule = gammace_ref.gamma_schedule(0.0, 0.1, total_steps=10)
for step in range(10):
    params, state, loss = train_step(params, state, jnp.asarray(schedule(step)))
print(f"loss after 10 steps: {float(loss):.3f}")
