"""Implementations a kernel author brings to the oracle -- careful ones and the usual bugs.

The oracle's conformance tests (``test_oracle_*.py``) run these through
``check_implementation`` / ``check_linear_implementation`` and assert the
verdicts; docs/oracle.md shows the sections between the ``--8<--`` markers as
its worked examples.  Everything here is written the way a kernel is written
outside gammace_ref: plain torch (or JAX) ops, float32 compute, an analytic
backward.

* :func:`careful_rows` -- the per-row value and gradient, log-space, ``1 - p``
  summed from the other classes, in float32 for 16-bit input
  (``compute_dtype`` forces another: :func:`sloppy_bf16` computes in bfloat16);
* :class:`CarefulGammaCE` / :func:`careful_gamma_ce` -- per-example losses with
  the analytic gradient, cast back to the input dtype (the careful bf16 kernel:
  float32 loss, bfloat16 gradient);
* :func:`training_gamma_ce` / :func:`training_tailr` -- the training signature
  (``reduction``, ``ignore_index``, ``label_smoothing``), and the bugs the
  oracle must catch: :func:`mean_over_all_rows`, :func:`tailr_smoothing_weighted`,
  :func:`smoothing_over_other_classes`, :func:`mean_scale_in_float32`;
* :func:`onehot_backward` -- careful value, gradient ``w·(softmax - onehot)``
  (the usual fused-kernel backward): fails the reference profile at p → 1 only
  in components of 1e-26, passes the kernel profile; :func:`gamma_one_weightless`
  forgets the weight at γ = 1;
* :func:`fused_linear_gamma_ce` -- a chunked fused linear + γ-CE kernel
  (float32 logits and accumulation for 16-bit input); ``dw_scale=2`` is the
  dW-off-by-2× bug;
* :func:`paper_gradient_tailr` -- TaiLr whose backward is the paper's gradient
  ``W·(softmax - onehot)`` written with differentiable ops: first order right,
  but a double backward differentiates ``W`` (``order=2`` rejects it;
  ``detach_weight=True`` is the fix);
* :func:`naive_gamma_ce` -- the textbook formula;
* :func:`jax_gamma_ce` (traced-γ friendly, ``jax.custom_vjp``) and
  :func:`jax_branchy` (``if gamma == 1:`` -- traced γ unsupported).
"""

# --8<-- [start:imports]
import math

import torch
import torch.nn.functional as F
# --8<-- [end:imports]


# --8<-- [start:naive]
def naive_gamma_ce(logits, targets, gamma):
    """The textbook formula: p from softmax, then -log(γ + (1-γ)p)/(1-γ); torch autograd for the gradient."""
    p = F.softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
    if gamma == 1:
        return 1 - p
    return -torch.log(gamma + (1 - gamma) * p) / (1 - gamma)
# --8<-- [end:naive]


# --8<-- [start:careful]
def careful_rows(logits, targets, gamma, threshold=None, label_smoothing=0.0, smoothing="uniform",
                 compute_dtype=None):
    """Per-row loss and d loss / d logits of γ-CE (TaiLr with ``threshold``), no autograd.

    Computed in ``compute_dtype`` (default: float32, or float64 for float64
    input): log p_y and 1 - p_y in log space, 1 - p_y summed from the other
    classes, the gradient as one product per component.
    """
    dtype = compute_dtype or torch.promote_types(logits.dtype, torch.float32)
    z = logits.to(dtype)
    n_classes = z.shape[-1]
    zm = z - z.amax(-1, keepdim=True)
    onehot = F.one_hot(targets, n_classes).bool()
    log_r = torch.logsumexp(zm.masked_fill(onehot, -math.inf), -1)  # log Σ_{j≠y} e^{z_j - m}
    d = zm.gather(-1, targets[:, None])[:, 0]
    log_s = torch.logaddexp(log_r, d)
    lp, q = d - log_s, torch.exp(log_r - log_s)  # log p_y and 1 - p_y, without cancellation
    c = 1.0 - gamma
    if gamma == 0:
        loss, w = -lp, torch.ones_like(lp)
    elif gamma == 1:
        loss, w = q, torch.exp(lp)
    else:
        log_den = torch.logaddexp(torch.full_like(lp, math.log(gamma)), math.log(c) + lp)
        x = c * q  # may be subnormal (q ~ 1e-304): q·(1 + x/2) keeps the digits -log1p(-x)/c would lose
        small = torch.where(x < 1e-8, q * (1 + x / 2), -torch.log1p(-x) / c)
        loss = torch.where(x <= 0.5, small, -log_den / c)
        w = torch.exp(lp - log_den)
    if threshold is not None:  # TaiLr: weight clip(w, b, 1), surrogate W·(-log p_y)
        w = w.clamp(threshold, 1.0)
        loss = w * -lp
    p = torch.exp(zm - log_s[:, None])
    eps = label_smoothing
    k = (1 - eps) * w
    grad = torch.where(onehot, -(k * q)[:, None], k[:, None] * p)
    if eps:
        # ε/C Σ_j -log p_j = Σ_j (ε/C)(-zm_j) + ε·log s: scaled before the sum, which cannot overflow.
        if smoothing == "others":  # BUG: ε spread over the C - 1 other classes
            smooth = ((eps / (n_classes - 1)) * -zm).masked_fill(onehot, 0.0).sum(-1) + eps * log_s
            grad_s = eps * p - (eps / (n_classes - 1)) * (~onehot).to(dtype)
        else:
            smooth = ((eps / n_classes) * -zm).sum(-1) + eps * log_s
            grad_s = eps * p - eps / n_classes
        if smoothing == "weighted":  # BUG: TaiLr's weight applied to the smoothing term too
            smooth, grad_s = w * smooth, w[:, None] * grad_s
        loss = (1 - eps) * loss + smooth
        grad = grad + grad_s
    return loss, grad


class CarefulGammaCE(torch.autograd.Function):
    """Per-example losses of :func:`careful_rows` with its analytic gradient, cast to the input's dtype."""

    @staticmethod
    def forward(ctx, logits, targets, gamma, threshold=None, label_smoothing=0.0, smoothing="uniform",
                compute_dtype=None):
        loss, grad = careful_rows(logits, targets, gamma, threshold, label_smoothing, smoothing, compute_dtype)
        ctx.save_for_backward(grad)
        ctx.input_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return (grad * g[:, None]).to(ctx.input_dtype), None, None, None, None, None, None


def careful_gamma_ce(logits, targets, gamma):
    """bfloat16/float16 in, float32 compute, float32 losses, a gradient in the input's dtype."""
    return CarefulGammaCE.apply(logits, targets, gamma)
# --8<-- [end:careful]


# --8<-- [start:sloppy]
def sloppy_bf16(logits, targets, gamma):
    """The same formulas computed in the input's dtype (bfloat16 in, bfloat16 arithmetic)."""
    return CarefulGammaCE.apply(logits, targets, gamma, None, 0.0, "uniform", logits.dtype)
# --8<-- [end:sloppy]


# --8<-- [start:training]
def training_gamma_ce(logits, targets, gamma, threshold=None, *, reduction="mean", ignore_index=-100,
                      label_smoothing=0.0, smoothing="uniform", _mean="counted", _scale_dtype=None):
    """γ-CE (TaiLr with ``threshold``) with torch's training conventions.

    ``ignore_index`` rows count for nothing (loss 0, zero gradient);
    ``"mean"`` is over the counted rows (0 when there are none); label
    smoothing adds ``ε/C Σ_j -log p_j``, unweighted.
    """
    counted = targets != ignore_index
    rows = CarefulGammaCE.apply(logits, torch.where(counted, targets, 0), gamma, threshold, label_smoothing,
                                smoothing)
    rows = torch.where(counted, rows, 0.0)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    n = counted.sum() if _mean == "counted" else torch.tensor(targets.numel())  # BUG when not "counted"
    scale = 1.0 / max(int(n), 1)
    if _scale_dtype is not None:  # BUG: 1/n rounded to float32 in a float64 kernel
        scale = torch.tensor(scale, dtype=_scale_dtype).item()
    return rows.sum() * scale


def training_tailr(logits, targets, gamma, threshold, **options):
    return training_gamma_ce(logits, targets, gamma, threshold, **options)
# --8<-- [end:training]


# --8<-- [start:training_bugs]
def mean_over_all_rows(logits, targets, gamma, **options):
    """BUG: the mean divided by N, ignored rows included."""
    return training_gamma_ce(logits, targets, gamma, _mean="all", **options)


def tailr_smoothing_weighted(logits, targets, gamma, threshold, **options):
    """BUG: TaiLr's weight W multiplies the label-smoothing term too."""
    return training_gamma_ce(logits, targets, gamma, threshold, smoothing="weighted", **options)


def smoothing_over_other_classes(logits, targets, gamma, **options):
    """BUG: label smoothing spread over the C - 1 other classes (ε/(C-1) each) instead of all C."""
    return training_gamma_ce(logits, targets, gamma, smoothing="others", **options)


def mean_scale_in_float32(logits, targets, gamma, **options):
    """BUG: a float64 kernel whose mean multiplies by 1/n rounded to float32."""
    return training_gamma_ce(logits, targets, gamma, _scale_dtype=torch.float32, **options)
# --8<-- [end:training_bugs]


# --8<-- [start:onehot]
class _OnehotBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, gamma, weightless_at_one):
        loss, _ = careful_rows(logits, targets, gamma)
        z = logits.to(loss.dtype)
        p = torch.softmax(z, -1)
        py = p.gather(-1, targets[:, None])[:, 0]
        w = torch.ones_like(py) if gamma == 0 or (gamma == 1 and weightless_at_one) else py / (
            gamma + (1 - gamma) * py)
        ctx.save_for_backward(w[:, None] * (p - F.one_hot(targets, z.shape[-1]).to(z.dtype)))
        ctx.input_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return (grad * g[:, None]).to(ctx.input_dtype), None, None, None


def onehot_backward(logits, targets, gamma):
    """Careful value; gradient w·(softmax - onehot), its target component p_y - 1 formed by subtraction."""
    return _OnehotBackward.apply(logits, targets, gamma, False)


def gamma_one_weightless(logits, targets, gamma):
    """BUG: at γ = 1 the gradient of cross-entropy (w = 1) instead of w = p."""
    return _OnehotBackward.apply(logits, targets, gamma, True)
# --8<-- [end:onehot]


# --8<-- [start:fused_linear]
class FusedLinearGammaCE(torch.autograd.Function):
    """γ-CE of ``hidden @ weight.T + bias`` chunk by chunk: no N×C logits kept.

    The logits of a chunk are formed in float32 (16-bit inputs are upcast),
    go through :func:`careful_rows`, and their gradient is chained at once:
    ``d hidden = G @ W``, ``d weight += G.T @ hidden``, ``d bias += Σ G``
    (float32 accumulators, cast to the parameters' dtype at the end).  The
    backward pass recomputes each chunk.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, gamma, chunk, dw_scale):
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.gamma, ctx.chunk, ctx.dw_scale = gamma, chunk, dw_scale
        losses = [careful_rows(_logits(hidden[s:s + chunk], weight, bias), targets[s:s + chunk], gamma)[0]
                  for s in range(0, hidden.shape[0], chunk)]
        return torch.cat(losses)

    @staticmethod
    def backward(ctx, g):
        hidden, weight, bias, targets = ctx.saved_tensors
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        w = weight.to(dtype)
        d_hidden = torch.empty_like(hidden)
        d_weight = torch.zeros_like(w)
        d_bias = None if bias is None else torch.zeros(w.shape[0], dtype=dtype, device=w.device)
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s:s + ctx.chunk].to(dtype)
            _, grad = careful_rows(_logits(h, weight, bias), targets[s:s + ctx.chunk], ctx.gamma)
            grad = grad * g[s:s + ctx.chunk, None].to(dtype)
            d_hidden[s:s + ctx.chunk] = (grad @ w).to(hidden.dtype)
            d_weight += grad.T @ h
            if bias is not None:
                d_bias += grad.sum(0)
        d_weight = (ctx.dw_scale * d_weight).to(weight.dtype)
        return (d_hidden, d_weight, None if bias is None else d_bias.to(bias.dtype), None, None, None, None)


def _logits(h, weight, bias):
    dtype = torch.promote_types(h.dtype, torch.float32)
    z = h.to(dtype) @ weight.to(dtype).T
    return z if bias is None else z + bias.to(dtype)


def fused_linear_gamma_ce(hidden, weight, targets, gamma, *, bias=None, chunk=4, dw_scale=1.0):
    """Per-example γ-CE losses from hidden states; float32 losses, gradients in the inputs' dtypes."""
    return FusedLinearGammaCE.apply(hidden, weight, bias, targets, gamma, chunk, dw_scale)



def fused_linear_dw_twice(hidden, weight, targets, gamma, *, bias=None):
    """BUG: the weight gradient accumulated twice (off by 2×)."""
    return fused_linear_gamma_ce(hidden, weight, targets, gamma, bias=bias, dw_scale=2.0)
# --8<-- [end:fused_linear]


# --8<-- [start:jax]
def jax_gamma_ce(logits, targets, gamma):
    """γ-CE in JAX for any γ, traced or not (no Python branch on it), float32 compute, analytic gradient."""
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def f(z, y, g):
        return fwd(z, y, g)[0]

    def fwd(z, y, g):
        x = z.astype(jnp.promote_types(z.dtype, jnp.float32))
        zm = x - x.max(-1, keepdims=True)
        onehot = jax.nn.one_hot(y, x.shape[-1], dtype=bool)
        log_r = jax.nn.logsumexp(jnp.where(onehot, -jnp.inf, zm), -1)
        d = jnp.take_along_axis(zm, y[:, None], -1)[:, 0]
        log_s = jnp.logaddexp(log_r, d)
        lp, q = d - log_s, jnp.exp(log_r - log_s)
        c = jnp.asarray(1 - g, x.dtype)
        log_den = jnp.logaddexp(jnp.log(jnp.asarray(g, x.dtype)), jnp.log(c) + lp)
        cq = c * q
        small = jnp.where(cq < 1e-8, q * (1 + cq / 2), -jnp.log1p(-cq) / jnp.where(c > 0, c, 1))
        loss = jnp.where(g == 0, -lp, jnp.where(c == 0, q, jnp.where(cq <= 0.5, small, -log_den / c)))
        w = jnp.where(g == 0, 1.0, jnp.exp(lp - log_den)).astype(x.dtype)
        grad = jnp.where(onehot, -(w * q)[:, None], w[:, None] * jnp.exp(zm - log_s[:, None]))
        return loss, grad.astype(z.dtype)

    def bwd(grad, ct):
        return ct[:, None].astype(grad.dtype) * grad, None, None

    f.defvjp(lambda z, y, g: fwd(z, y, g), bwd)
    return f(logits, targets, gamma)
# --8<-- [end:jax]


# --8<-- [start:jax_branchy]
def jax_branchy(logits, targets, gamma):
    """A JAX kernel with Python branches on γ: under jax.jit γ must be static."""
    import jax
    import jax.numpy as jnp

    lp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), -1), targets[:, None], -1)[:, 0]
    if gamma == 0:
        return -lp
    return -jnp.log(gamma + (1 - gamma) * jnp.exp(lp)) / (1 - gamma)
# --8<-- [end:jax_branchy]


# --8<-- [start:official_tailr]
def official_tailr(logits, targets, gamma, threshold, *, reduction="sum", ignore_index=-100, label_smoothing=0.0):
    """The formula of the official TaiLr criterion, transcribed (thu-coai/TaiLr,
    fairseq/criterions/tailr.py, ``tailr_loss``).

    There ``lprobs = softmax(lprobs).log()`` of the model's log-probabilities,
    i.e. ``log(softmax(logits))``; ``nll = -lprobs[target]``,
    ``smooth = -Σ_j lprobs_j``, both zeroed on padding; the weight, without
    gradient, ``exp(log p - log(γ + (1-γ)p))`` clamped to ``[min_weight, 1]``
    (``min_weight`` is gammace_ref's threshold ``b``); the loss
    ``(1-ε)·Σ W·nll + ε/C·Σ smooth`` (``reduce=True`` sums; fairseq divides by
    the token count afterwards).  Transcription details: padding is
    ``ignore_index`` and its rows gather class 0 (-100 is no index);
    ``reduction="none"`` / ``"mean"`` are added.
    """
    probs = torch.softmax(logits, dim=-1)
    lprobs = probs.log()
    target = targets.unsqueeze(-1)
    pad = target.eq(ignore_index)
    target = target.masked_fill(pad, 0)
    nll = (-lprobs.gather(dim=-1, index=target)).masked_fill(pad, 0.0)
    smooth = (-lprobs.sum(dim=-1, keepdim=True)).masked_fill(pad, 0.0)
    with torch.no_grad():
        w = probs.gather(dim=-1, index=target)
        w = (w.log() - (gamma + (1 - gamma) * w).log()).exp().clamp(min=threshold, max=1.0)
    loss = ((1.0 - label_smoothing) * w * nll + label_smoothing / lprobs.size(-1) * smooth).squeeze(-1)
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.sum() / (~pad).sum().clamp(min=1)
    return loss.sum()
# --8<-- [end:official_tailr]


# --8<-- [start:paper_gradient_tailr]
class _PaperGradientTailr(torch.autograd.Function):
    """TaiLr's value, and the paper's gradient ``W·(softmax - onehot)`` as a differentiable backward."""

    @staticmethod
    def forward(ctx, logits, targets, gamma, threshold, detach_weight):
        loss, _ = careful_rows(logits, targets, gamma, threshold)
        ctx.save_for_backward(logits, targets)
        ctx.gamma, ctx.threshold, ctx.detach_weight = gamma, threshold, detach_weight
        return loss

    @staticmethod
    def backward(ctx, g):
        logits, targets = ctx.saved_tensors
        p = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        p_y = p.gather(-1, targets[:, None])
        w = (p_y / (ctx.gamma + (1 - ctx.gamma) * p_y)).clamp(ctx.threshold, 1.0)
        if ctx.detach_weight:  # the fix: W is a constant of the surrogate -stop_gradient(W)·log p
            w = w.detach()
        grad = w * (p - F.one_hot(targets, logits.shape[-1]).to(p.dtype))  # a double backward sees dW/dz
        return (g[:, None] * grad).to(logits.dtype), None, None, None, None


def paper_gradient_tailr(logits, targets, gamma, threshold, detach_weight=False):
    """First derivatives right; second derivatives those of the paper's gradient field (W differentiated)."""
    return _PaperGradientTailr.apply(logits, targets, gamma, threshold, detach_weight)
# --8<-- [end:paper_gradient_tailr]
