r"""γ-CE and TaiLr straight from hidden states, without an N×C logits array.

For a final linear layer ``logits = hidden @ weight.T + bias`` (``hidden``
``(..., H)``, ``weight`` ``(C, H)``, ``bias`` ``(C,)`` or ``None``), these
functions return the loss and its gradients with respect to ``hidden``,
``weight`` and ``bias``, computed chunk by chunk over the tokens: for each
chunk of ``chunk_size`` rows, the logits of that chunk go through the core
(:func:`gammace_ref._core.compute`, the one implementation of the maths),
whose logits gradient ``G`` is chained at once into
``d hidden[chunk] = G @ weight``, ``d weight += G.T @ hidden[chunk]`` and
``d bias += Σ_rows G``.  Three matrix products, as on the materialised path;
only ``chunk_size × C`` logits (and the core's temporaries of that size)
exist at a time.

``chunk_size`` defaults to what ``memory_budget`` bytes (default 256 MiB) of
such temporaries allow: ``memory_budget // (TEMPORARIES · C · itemsize)``
rows, at least one (:func:`chunk_rows`).  The budget bounds the chunk
temporaries only: the returned gradients (the size of ``hidden`` and
``weight``) and one ``C × H`` product for the ``weight`` update come on top.
A single row of ``C`` logits is never split (no vocabulary chunking): with
a budget below ``TEMPORARIES · C · itemsize`` the chunk is one row.

Arguments other than the arrays are those of :mod:`gammace_ref._api`
(``gamma``, ``threshold``, ``reduction``, ``ignore_index``,
``label_smoothing``); ``targets`` has ``hidden``'s leading shape.  The
result is a :class:`LinearGrads` ``(loss, hidden, weight, bias)``: the
reduced loss (compute dtype) and the gradients of the reduced value (for
``reduction="none"``, of the sum), each in its input's dtype and shape;
``bias`` is ``None`` without a bias.  With ``reduction="mean"`` the mean is
over the counted targets of the whole batch, as in the core.

Errors are those of the core; a row with a non-finite logits maximum is
reported with its position in the flattened batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat

from . import _core, _docs, _execution, _options, _validation

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "TEMPORARIES",
    "LinearGrads",
    "chunk_rows",
    "chunk_size",
    "gamma_ce",
    "gamma_ce_value_and_grad",
    "run",
    "tailr",
    "tailr_value_and_grad",
]

#: Bytes of chunk temporaries allowed when neither ``memory_budget`` nor ``chunk_size`` is given.
DEFAULT_MEMORY_BUDGET = 256 * 2**20

#: Chunk-sized (``rows × C``) float arrays alive at once, at most: the logits
#: chunk, ``z - max``, its ``exp`` and, on libraries without in-place
#: updates, one masked copy (measured on NumPy: 3, see benchmarks/linear.py).
TEMPORARIES = 4


class LinearGrads(NamedTuple):
    """Loss and gradients with respect to ``hidden``, ``weight`` and ``bias`` (``None`` without one)."""

    loss: Any
    hidden: Any
    weight: Any
    bias: Any = None


def chunk_rows(n_classes: int, itemsize: int, memory_budget: int | None = None) -> int:
    """Rows per chunk whose ``TEMPORARIES`` arrays of ``n_classes`` floats fit ``memory_budget`` bytes.

    At least 1 (a row is never split).

    >>> chunk_rows(32000, 4)  # float32, default 256 MiB
    524
    """
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    return max(1, budget // (TEMPORARIES * n_classes * itemsize))


@_docs.shared("linear")
def gamma_ce_value_and_grad(hidden, weight, targets, gamma, *, bias=None, reduction="mean", ignore_index=None,
                            label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None) -> LinearGrads:
    """γ-CE of ``hidden @ weight.T + bias`` and its gradients, chunk by chunk.

    Same value and gradient as :func:`gammace_ref.gamma_ce_value_and_grad` on
    the materialised logits, chained through the linear layer.

    Examples
    --------
    >>> import numpy as np
    >>> from gammace_ref import linear
    >>> rng = np.random.default_rng(0)
    >>> h, w, y = rng.normal(size=(5, 3)), rng.normal(size=(7, 3)), np.array([0, 6, 2, 2, 1])
    >>> out = linear.gamma_ce_value_and_grad(h, w, y, 0.1, chunk_size=2)
    >>> out.hidden.shape, out.weight.shape, out.bias is None
    ((5, 3), (7, 3), True)
    >>> import gammace_ref
    >>> loss, g = gammace_ref.gamma_ce_value_and_grad(h @ w.T, y, 0.1)
    >>> bool(np.isclose(out.loss, loss, rtol=1e-14)) and np.allclose(out.weight, g.T @ h, rtol=1e-13)
    True
    """
    opts = _validation.options_of(locals())
    return run(hidden, weight, bias, targets, opts, memory_budget=memory_budget, chunk_size=chunk_size)


@_docs.shared("linear")
def tailr_value_and_grad(hidden, weight, targets, gamma, threshold, *, bias=None, reduction="mean",
                         ignore_index=None, label_smoothing=0.0, where=None, memory_budget=None,
                         chunk_size=None) -> LinearGrads:
    """TaiLr objective of ``hidden @ weight.T + bias`` and its (the paper's) gradients, chunk by chunk.
    """
    opts = _validation.options_of(locals())
    return run(hidden, weight, bias, targets, opts, memory_budget=memory_budget, chunk_size=chunk_size)


@_docs.shared("loss")
def gamma_ce(hidden, weight, targets, gamma, *, bias=None, reduction="mean", ignore_index=None,
             label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None):
    """γ-CE loss only (no gradient work), chunk by chunk; see :func:`gamma_ce_value_and_grad`.
    """
    opts = _validation.options_of(locals())
    return run(hidden, weight, bias, targets, opts, need_grad=False, memory_budget=memory_budget,
               chunk_size=chunk_size).loss


@_docs.shared("loss")
def tailr(hidden, weight, targets, gamma, threshold, *, bias=None, reduction="mean", ignore_index=None,
          label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None):
    """TaiLr loss only, chunk by chunk; see :func:`tailr_value_and_grad`.
    """
    opts = _validation.options_of(locals())
    return run(hidden, weight, bias, targets, opts, need_grad=False, memory_budget=memory_budget,
               chunk_size=chunk_size).loss


def chunk_size(a: _validation.CheckedLinear) -> int:
    """Rows per chunk: ``a.chunk_size``, else what ``a.memory_budget`` allows (:func:`chunk_rows`), at most N."""
    n, n_classes = a.h.shape[0], a.w.shape[0]
    rows = a.chunk_size or chunk_rows(n_classes, a.xp.finfo(a.h.dtype).bits // 8, a.memory_budget)
    return min(rows, max(n, 1))


def run(hidden, weight, bias, targets, opts: _options.Options, *, need_grad=True, memory_budget=None, chunk_size=None,
        cotangent=None, scan=None, xp=None) -> LinearGrads:
    """Validate, then :func:`fused` (the path every function here and the adapters take)."""
    a = _validation.check_linear(hidden, weight, bias, targets, opts, memory_budget=memory_budget,
                                 chunk_size=chunk_size, xp=xp)
    return fused(a, need_grad=need_grad, cotangent=cotangent, scan=scan)


def fused(a: _validation.CheckedLinear, *, need_grad: bool, cotangent=None, scan=None) -> LinearGrads:
    """The chunked computation on validated inputs (for the adapters).

    ``cotangent`` (``reduction="none"`` only): per-target weights of the
    losses, shape ``a.batch_shape``; the gradients are then those of
    ``Σ cotangent·loss`` (a vector-Jacobian product), without scaling any
    chunk of logits.  ``scan``: a ``jax.lax.scan``-like loop
    ``scan(body, init, xs) -> (carry, stacked)`` for the whole chunks (the
    remainder runs after it): a tracing compiler then sees one chunk, not an
    unrolled loop whose chunks it may keep alive together.  Inside it no
    value is read, so a row with a non-finite logits maximum becomes NaN
    instead of raising.
    """
    xp, h, w, b, y, opts = a.xp, a.h, a.w, a.b, a.y, a.options
    n, width = h.shape
    n_classes = w.shape[0]
    dev, dtype = a.device, h.dtype
    cs = chunk_size(a)
    valid, _ = _core.targets(xp, y, opts, n_classes, dev)
    # Targets out of range raise here, with their index in the whole batch
    # (traced: the core makes their rows NaN, chunk by chunk).
    if scan is None and _validation.read_any(xp, valid & ((y < 0) | (y >= n_classes))):
        _validation.raise_bad_rows(xp, y, valid, xp.zeros(y.shape, dtype=dtype, device=dev), n_classes)
    # The mean's 1/count (a mean over nothing is 0), applied to the chunk's
    # small results rather than to its logits gradient.
    scale = None
    if opts.reduction == "mean":
        scale = 1.0 / xp.clip(xp.sum(xp.astype(valid, dtype)), 1.0, None)
    if cotangent is not None:
        cotangent = xp.reshape(xp.astype(cotangent, dtype), (n,))
    chunk_opts = opts.replace(reduction="none" if opts.reduction == "none" else "sum")
    writable = scan is None and array_api_compat.is_writeable_array(h)
    wt = w.T

    def step(h_c, y_c, where_c, c_c, start):
        """One chunk: its loss and its shares of the three gradients."""
        z = xp.matmul(h_c, wt)
        if b is not None:
            if writable:
                z += b
            else:
                z = z + b
        try:
            loss_c, g, _ = _core.compute(xp, z, y_c, chunk_opts.replace(where=where_c), need_grad=need_grad,
                                         plan=_execution.plan(xp, z, dev, eager=scan is None))
        except ValueError as exc:
            raise ValueError(f"in the chunk of rows {start} to {start + h_c.shape[0] - 1} of the flattened "
                             f"batch (logits = hidden @ weight.T + bias): {exc}") from None
        del z
        if not need_grad:
            return loss_c, None, None, None
        if c_c is not None:  # d/dθ Σ_i c_i·loss_i: weight row i of G by c_i, through the small factors
            dh_c = xp.matmul(g, w) * c_c[:, None]
            dw_c = xp.matmul(g.T, h_c * c_c[:, None])
            db_c = None if b is None else xp.matmul(c_c, g)
        else:
            dh_c = xp.matmul(g, w)
            dw_c = xp.matmul(g.T, h_c)
            db_c = None if b is None else xp.sum(g, axis=0)
        if scale is not None:
            dh_c = dh_c * scale
        return loss_c, dh_c, dw_c, db_c

    losses, pieces = [], []
    d_hidden = d_weight = d_bias = None
    if need_grad and writable:
        d_hidden = xp.empty((n, width), dtype=dtype, device=dev)
    done = 0  # rows handled by `scan`
    if scan is not None and n >= cs:
        k = n // cs
        start = done = k * cs
        xs = (xp.reshape(h[:start, ...], (k, cs, width)), xp.reshape(y[:start], (k, cs)),
              *(None if v is None else xp.reshape(v[:start], (k, cs)) for v in (opts.where, cotangent)))

        def body(carry, x):
            loss_c, dh_c, dw_c, db_c = step(*x, start=None)
            if not need_grad:
                return carry, (loss_c, None)
            return (carry[0] + dw_c, None if db_c is None else carry[1] + db_c), (loss_c, dh_c)

        init = (None, None) if not need_grad else (
            xp.zeros(w.shape, dtype=dtype, device=dev),
            None if b is None else xp.zeros((n_classes,), dtype=dtype, device=dev))
        (d_weight, d_bias), (stacked_loss, stacked_dh) = scan(body, init, xs)
        losses.append(xp.reshape(stacked_loss, (start,)) if opts.reduction == "none" else xp.sum(stacked_loss))
        if need_grad:
            pieces.append(xp.reshape(stacked_dh, (start, width)))
    for start in range(done, n, cs):
        stop = min(start + cs, n)
        loss_c, dh_c, dw_c, db_c = step(h[start:stop, ...], y[start:stop],
                                        *(None if v is None else v[start:stop] for v in (opts.where, cotangent)),
                                        start)
        losses.append(loss_c)
        if not need_grad:
            continue
        if d_hidden is not None:
            d_hidden[start:stop, ...] = dh_c
        else:
            pieces.append(dh_c)
        d_weight = _accumulate(d_weight, dw_c, writable)
        if db_c is not None:
            d_bias = _accumulate(d_bias, db_c, writable)

    loss = _total(xp, losses, a, dtype, dev, scale)
    if not need_grad:
        return LinearGrads(loss, None, None, None)
    if d_hidden is None:
        d_hidden = xp.concat(pieces, axis=0) if pieces else xp.zeros((n, width), dtype=dtype, device=dev)
    if d_weight is None:  # no rows
        d_weight = xp.zeros(w.shape, dtype=dtype, device=dev)
        d_bias = None if b is None else xp.zeros((n_classes,), dtype=dtype, device=dev)
    elif scale is not None:
        d_weight = d_weight * scale
        d_bias = None if d_bias is None else d_bias * scale
    d_hidden = xp.reshape(xp.astype(d_hidden, a.hidden_dtype, copy=False), a.batch_shape + (width,))
    d_weight = xp.astype(d_weight, a.weight_dtype, copy=False)
    if d_bias is not None:
        d_bias = xp.astype(d_bias, a.weight_dtype, copy=False)
    return LinearGrads(loss, d_hidden, d_weight, d_bias)


def _accumulate(total, part, writable):
    if total is None:
        return part
    if writable:
        total += part
        return total
    return total + part


def _total(xp, losses, a, dtype, dev, scale):
    if a.options.reduction == "none":
        flat = xp.concat(losses, axis=0) if losses else xp.zeros((0,), dtype=dtype, device=dev)
        return xp.reshape(flat, a.batch_shape)
    total = xp.asarray(0.0, dtype=dtype, device=dev) if not losses else losses[0]
    for part in losses[1:]:
        total = total + part
    return total * scale if scale is not None else total
