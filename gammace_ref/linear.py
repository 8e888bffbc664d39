r"""γ-CE and TaiLr straight from hidden states, without an N×C logits array.

For a final linear layer ``logits = hidden @ weight.T + bias`` (``hidden``
``(..., H)``, ``weight`` ``(C, H)``, ``bias`` ``(C,)`` or ``None``), these
functions return the loss and its gradients with respect to ``hidden``,
``weight`` and ``bias``, computed chunk by chunk over the tokens: for each
chunk of rows, the logits of that chunk go through the core (the one
implementation of the maths), whose logits gradient ``G`` is chained at once
into ``d hidden[chunk] = G @ weight``, ``d weight += G.T @ hidden[chunk]`` and
``d bias += Σ_rows G``.  Three matrix products, as on the materialised path;
only a chunk of logits (and the core's temporaries of that size) exists at a
time.

**Vocabulary blocks.**  When one row of ``C`` logits does not fit the budget,
the classes are taken in blocks as well: a first pass over the blocks keeps,
per row, the running maximum, ``R = Σ_{j≠y} exp(z_j - max)`` rescaled as the
maximum moves, the target logit (from the block that holds it) and, with
label smoothing, ``Σ (max - z_j)`` (:func:`gammace_ref._core.merge`, an online
log-sum-exp with ``1 - p`` from the other classes' mass, exact as the core
is); a second pass recomputes each block's logits for its share of the
gradient.  The result equals the unsplit one within the accuracy table's
tolerances; the cost is one more ``N × C × H`` product (the recomputation).

**Sizes** (:func:`block_sizes`).  ``memory_budget`` (default 256 MiB) bounds
the chunk temporaries: ``TEMPORARIES`` arrays of ``rows × classes`` floats.
If a whole row fits, the chunk is ``memory_budget // (TEMPORARIES · C ·
itemsize)`` rows of all ``C`` classes (:func:`chunk_rows`); if not, the
vocabulary is split into blocks of at least ``MIN_BLOCK_CLASSES`` classes
(fewer rows per chunk first).  ``chunk_size`` sets the rows instead; given
with ``memory_budget``, the budget then sets the block of classes.  The
budget bounds the chunk temporaries only: the returned gradients (the size of
``hidden`` and ``weight``) come on top, and libraries without in-place
updates (JAX) add one ``C × H`` product per chunk for the ``weight`` update.

Arguments other than the arrays are those of :mod:`gammace_ref._api`
(``gamma``, ``threshold``, ``reduction``, ``ignore_index``,
``label_smoothing``); ``targets`` has ``hidden``'s leading shape.  The
result is a :class:`LinearGrads` ``(loss, hidden, weight, bias)``: the
reduced loss (compute dtype) and the gradients of the reduced value (for
``reduction="none"``, of the sum), each in its input's dtype and shape;
``bias`` is ``None`` without a bias.  With ``reduction="mean"`` the mean is
over the counted targets of the whole batch, as in the core.
``return_stats=True`` adds the batch's :class:`~gammace_ref._core.Stats`
(NLL, weight, fraction clipped; for logging): ``(result, stats)``.

float16/bfloat16 inputs are computed in float32; chunk logits that a
library's mixed precision (``torch.autocast``) returns in a narrower dtype are
upcast before the core, and losses and gradients accumulate in the compute
dtype.  Errors are those of the core; a row with a non-finite logits maximum
is reported with its position in the flattened batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import array_api_compat

from . import _core, _docs, _execution, _options, _validation

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MIN_BLOCK_CLASSES",
    "TEMPORARIES",
    "Kernels",
    "LinearGrads",
    "block_sizes",
    "chunk_rows",
    "chunk_size",
    "core_kernels",
    "gamma_ce",
    "gamma_ce_value_and_grad",
    "run",
    "tailr",
    "tailr_value_and_grad",
]

#: Bytes of chunk temporaries allowed when neither ``memory_budget`` nor ``chunk_size`` is given.
DEFAULT_MEMORY_BUDGET = 256 * 2**20

#: Chunk-sized (``rows × classes``) float arrays alive at once, at most: the logits
#: chunk, ``z - max``, its ``exp`` and, on libraries without in-place
#: updates, one masked copy (measured on NumPy: 3, see benchmarks/linear.py).
TEMPORARIES = 4

#: When a row of C logits does not fit the budget: the narrowest block of
#: classes worth its products (below it, fewer rows per chunk instead).
MIN_BLOCK_CLASSES = 4096

_STATS_DOC = ("bool", "Also return the batch's statistics for logging (a ``Stats``: counted targets, sums of "
                      "-log p, of the gradient weight and of the targets clipped at b): ``(result, stats)``.")


class LinearGrads(NamedTuple):
    """Loss and gradients with respect to ``hidden``, ``weight`` and ``bias`` (``None`` without one)."""

    loss: Any
    hidden: Any
    weight: Any
    bias: Any = None


def chunk_rows(n_classes: int, itemsize: int, memory_budget: int | None = None) -> int:
    """Rows per chunk whose ``TEMPORARIES`` arrays of ``n_classes`` floats fit ``memory_budget`` bytes.

    At least 1 (below one row, :func:`block_sizes` splits the vocabulary).

    >>> chunk_rows(32000, 4)  # float32, default 256 MiB
    524
    """
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    return max(1, budget // (TEMPORARIES * n_classes * itemsize))


@_docs.shared("linear", return_stats=_STATS_DOC)
def gamma_ce_value_and_grad(hidden, weight, targets, gamma, *, bias=None, reduction="mean", ignore_index=None,
                            label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None,
                            return_stats=False) -> LinearGrads:
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
    >>> split = linear.gamma_ce_value_and_grad(h, w, y, 0.1, chunk_size=2, memory_budget=96)  # 3 classes a block
    >>> bool(np.isclose(split.loss, loss, rtol=1e-14)) and np.allclose(split.weight, out.weight, rtol=1e-13)
    True
    """
    opts = _validation.options_of(locals())
    return run(hidden, weight, bias, targets, opts, memory_budget=memory_budget, chunk_size=chunk_size,
               stats=_flag("return_stats", return_stats))


@_docs.shared("linear", return_stats=_STATS_DOC)
def tailr_value_and_grad(hidden, weight, targets, gamma, threshold, *, bias=None, reduction="mean",
                         ignore_index=None, label_smoothing=0.0, where=None, memory_budget=None,
                         chunk_size=None, return_stats=False) -> LinearGrads:
    """TaiLr objective of ``hidden @ weight.T + bias`` and its (the paper's) gradients, chunk by chunk.
    """
    opts = _validation.options_of(locals())
    return run(hidden, weight, bias, targets, opts, memory_budget=memory_budget, chunk_size=chunk_size,
               stats=_flag("return_stats", return_stats))


@_docs.shared("loss", return_stats=_STATS_DOC)
def gamma_ce(hidden, weight, targets, gamma, *, bias=None, reduction="mean", ignore_index=None,
             label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None, return_stats=False):
    """γ-CE loss only (no gradient work), chunk by chunk; see :func:`gamma_ce_value_and_grad`.
    """
    opts = _validation.options_of(locals())
    return _loss_only(run(hidden, weight, bias, targets, opts, need_grad=False, memory_budget=memory_budget,
                          chunk_size=chunk_size, stats=_flag("return_stats", return_stats)))


@_docs.shared("loss", return_stats=_STATS_DOC)
def tailr(hidden, weight, targets, gamma, threshold, *, bias=None, reduction="mean", ignore_index=None,
          label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None, return_stats=False):
    """TaiLr loss only, chunk by chunk; see :func:`tailr_value_and_grad`.
    """
    opts = _validation.options_of(locals())
    return _loss_only(run(hidden, weight, bias, targets, opts, need_grad=False, memory_budget=memory_budget,
                          chunk_size=chunk_size, stats=_flag("return_stats", return_stats)))


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_validation.describe(value)} {value!r}")
    return value


def _loss_only(out):
    return (out[0].loss, out[1]) if isinstance(out, tuple) and not isinstance(out, LinearGrads) else out.loss


def block_sizes(a: _validation.CheckedLinear) -> tuple[int, int]:
    """``(rows, classes)`` of a chunk: ``classes < C`` splits the vocabulary into blocks.

    ``chunk_size`` given: those rows (at most N), and all the classes unless
    ``memory_budget`` is given too, which then sets the classes per block.
    Otherwise the budget's ``TEMPORARIES · rows · classes`` floats: whole rows
    (:func:`chunk_rows`) if one fits, else blocks of at least
    ``MIN_BLOCK_CLASSES`` classes with as many rows as the rest allows.
    """
    n, n_classes = max(a.h.shape[0], 1), a.w.shape[0]
    budget = DEFAULT_MEMORY_BUDGET if a.memory_budget is None else a.memory_budget
    elements = max(1, budget // (TEMPORARIES * (a.xp.finfo(a.h.dtype).bits // 8)))
    if a.chunk_size is not None:
        rows = min(a.chunk_size, n)
        return rows, (n_classes if a.memory_budget is None else min(n_classes, max(1, elements // rows)))
    if elements >= n_classes:
        return min(elements // n_classes, n), n_classes
    rows = max(1, min(n, elements // MIN_BLOCK_CLASSES))
    return rows, max(1, elements // rows)


def chunk_size(a: _validation.CheckedLinear) -> int:
    """Rows per chunk (:func:`block_sizes`)."""
    return block_sizes(a)[0]


def run(hidden, weight, bias, targets, opts: _options.Options, *, need_grad=True, memory_budget=None, chunk_size=None,
        cotangent=None, scan=None, xp=None, **kw):
    """Validate, then :func:`fused` (the path every function here and the adapters take)."""
    a = _validation.check_linear(hidden, weight, bias, targets, opts, memory_budget=memory_budget,
                                 chunk_size=chunk_size, xp=xp)
    return fused(a, need_grad=need_grad, cotangent=cotangent, scan=scan, **kw)


# --------------------------------------------------------------------------- the pieces of a chunk


class Kernels(NamedTuple):
    """The pieces of one chunk, as a library runs them.

    :func:`core_kernels` gives the core's own, eagerly; an adapter may give
    compiled ones (``gammace_ref.torch``).  Arrays are in the compute layout
    (classes last); ``opts`` are a chunk's options.

    * ``whole(z, y, opts, need_grad) -> (loss, G, bad)``: the core on whole rows.
    * ``stats(z, y, opts) -> Stats`` of whole rows.
    * ``block(z, y_safe, offset, n_classes, smoothing, top) -> Partial`` of
      one block of classes ``[offset, offset + z.shape[-1])`` (``top``: its
      row maximum, or ``None``).
    * ``grad(z, y_safe, offset, n_classes, m, terms, scale, opts) -> G`` of a block.
    * ``addmm(acc, a, b) -> acc + a @ b``, written into ``acc`` where it can.
    * ``checks``: the pieces run eagerly, so the driver reads a block's
      maximum before its statistics and names a poisoned row at once.
    """

    whole: Callable
    stats: Callable
    block: Callable
    grad: Callable
    addmm: Callable
    checks: bool


def core_kernels(xp, device, *, eager=True, writable=False) -> Kernels:
    """The core's pieces for arrays of ``xp`` (``eager``: values may be read; ``writable``: in place)."""

    def whole(z, y, opts, need_grad):
        return _core.compute(xp, z, y, opts, need_grad=need_grad, plan=_execution.plan(xp, z, device, eager=eager))

    def stats(z, y, opts):
        n = z.shape[-1]
        valid, y_safe = _core.targets(xp, y, opts, n, device)
        plan = _execution.plan(xp, z, device, eager=eager)
        plan.locate(y_safe, n)
        top = xp.max(z, axis=-1, keepdims=True)
        bad = _validation.bad_rows(xp, y, valid, top[..., 0], n, opts)
        if eager and _validation.read_any(xp, bad):
            _validation.raise_bad_rows(xp, y, valid, top[..., 0], n)
        return _core.stats(xp, _core.finish(xp, _core.block(xp, z, plan, False, top)), valid, bad, opts, device)

    def block(z, y_safe, offset, n_classes, smoothing, top=None):
        plan = _execution.block(xp, device, offset=offset, n_classes=n_classes)
        plan.locate(y_safe, z.shape[-1])
        return _core.block(xp, z, plan, smoothing, top)

    def grad(z, y_safe, offset, n_classes, m, terms, scale, opts):
        plan = _execution.block(xp, device, offset=offset, n_classes=n_classes)
        plan.locate(y_safe, z.shape[-1])
        return _core.gradient(xp, plan.exp_off_target(z, m), terms, scale, opts, n_classes, plan)

    def addmm(acc, a, b):
        if writable:
            acc += xp.matmul(a, b)
            return acc
        return acc + xp.matmul(a, b)

    return Kernels(whole, stats, block, grad, addmm, checks=eager)


class Shard(NamedTuple):
    """This process's slice ``[offset, offset + C_local)`` of ``n_classes`` (vocabulary parallelism).

    ``combine(partial, n_local) -> Partial``: the row statistics of all the
    slices from this one's (all-reduces of O(N) values); ``sum_hidden(dh)``:
    the gradient with respect to ``hidden``, summed over the slices (each
    holds its classes' share).
    """

    offset: int
    n_classes: int
    combine: Callable
    sum_hidden: Callable


# --------------------------------------------------------------------------- the driver


def fused(a: _validation.CheckedLinear, *, need_grad: bool, cotangent=None, scan=None, traced=False,
          kernels: Kernels | None = None, shard: Shard | None = None, stats=False):
    """The chunked computation on validated inputs (for the adapters).

    ``cotangent`` (``reduction="none"`` only): per-target weights of the
    losses, shape ``a.batch_shape``; the gradients are then those of
    ``Σ cotangent·loss`` (a vector-Jacobian product), without scaling any
    chunk of logits.  ``scan``: a ``jax.lax.scan``-like loop
    ``scan(body, init, xs) -> (carry, stacked)`` for the whole chunks of
    tokens and of classes (the remainders run after it): a tracing compiler
    then sees one chunk, not an unrolled loop whose chunks it may keep alive
    together.  ``traced``: a compiler or a batching transform traces the call
    (``torch.compile``, ``vmap``).  Under ``scan`` or ``traced`` no value is
    read and nothing written in place, so a row with a non-finite logits
    maximum (or a target out of range) becomes NaN instead of raising.
    ``kernels``: the chunk's pieces (default :func:`core_kernels`); ``shard``:
    this process's slice of the classes; ``stats``: also return the batch's
    :class:`~gammace_ref._core.Stats`, as ``(LinearGrads, Stats)``.
    """
    xp, h, w, b, y, opts = a.xp, a.h, a.w, a.b, a.y, a.options
    n, width = h.shape
    n_local = w.shape[0]
    offset, n_classes, combine = (0, n_local, None) if shard is None else shard[:3]
    dev, dtype = a.device, h.dtype
    eager = scan is None and not traced
    writable = eager and array_api_compat.is_writeable_array(h)
    k = kernels or core_kernels(xp, dev, eager=eager, writable=writable)
    cs, classes = block_sizes(a)
    split = classes < n_local or shard is not None
    valid, _ = _core.targets(xp, y, opts, n_classes, dev)
    # Targets out of range raise here, with their index in the whole batch
    # (traced: the core makes their rows NaN, chunk by chunk).
    if eager and _validation.read_any(xp, valid & ((y < 0) | (y >= n_classes))):
        _validation.raise_bad_rows(xp, y, valid, xp.zeros(y.shape, dtype=dtype, device=dev), n_classes)
    # The mean's 1/count (a mean over nothing is 0), applied to the chunk's
    # small results rather than to its logits gradient.
    scale = None
    if opts.reduction == "mean":
        scale = 1.0 / xp.clip(xp.sum(xp.astype(valid, dtype)), 1.0, None)
    if cotangent is not None:
        cotangent = xp.reshape(xp.astype(cotangent, dtype), (n,))
    chunk_opts = opts.replace(reduction="none" if opts.reduction == "none" else "sum")
    smoothing = _core.smoothing_on(opts)

    def logits(h_c, w_k, b_k):
        z = xp.matmul(h_c, w_k.T)
        if z.dtype != dtype:  # a narrower product (autocast): the core computes in the compute dtype
            z = xp.astype(z, dtype)
        if b_k is not None:
            if writable:
                z += b_k
            else:
                z = z + b_k
        return z

    def products(g, h_c, c_c, w_k, dh, acc, o, o2):
        """Add ``g``'s shares: ``dh += g @ w_k``; ``(dW, db)`` of classes ``o:o2``, or ``None`` if added to ``acc``.

        With a cotangent ``c_c``, the ``weight`` and ``bias`` shares weight row
        ``i`` of ``g`` by ``c_i`` through the small factors (``dh``: in :func:`step`).

        ``acc``: ``[d_weight, d_bias]``, written by item (in place where the
        slice is a view: assigning it to itself then costs nothing).
        """
        dh = k.addmm(dh, g, w_k)
        hc = h_c if c_c is None else h_c * c_c[:, None]
        db = None if b is None else (xp.sum(g, axis=0) if c_c is None else xp.matmul(c_c, g))
        if acc is None:
            return dh, xp.matmul(g.T, hc), db
        acc[0][o:o2, ...] = k.addmm(acc[0][o:o2, ...], g.T, hc)
        if db is not None:
            acc[1][o:o2] = acc[1][o:o2] + db
        return dh, None, None

    def whole_step(h_c, y_c, o_c, c_c, acc):
        z = logits(h_c, w, b)
        loss_c, g, bad = k.whole(z, y_c, o_c, need_grad)
        if eager and not k.checks and _validation.read_any(xp, bad):  # a compiled kernel: name the row
            _core.explain(xp, z, y_c, o_c, _execution.Masked(xp, dev))
        st = k.stats(z, y_c, o_c) if stats else None
        del z
        if not need_grad:
            return loss_c, None, None, None, st
        dh = xp.zeros((h_c.shape[0], width), dtype=dtype, device=dev)
        dh, dw, db = products(g, h_c, c_c, w, dh, acc, 0, n_local)
        return loss_c, dh, dw, db, st

    def blocked_step(h_c, y_c, o_c, c_c, acc):
        rows = h_c.shape[0]
        valid_c, y_safe = _core.targets(xp, y_c, o_c, n_classes, dev)
        blocks = _Blocks(xp, w, b, classes, scan)
        kept = []  # the logits of a single block, for the gradient pass

        def stat(part, w_k, b_k, off, count):
            z = logits(h_c, w_k, b_k)
            top = None
            if k.checks:  # a poisoned block would overflow the eager statistics: name its row now
                top = xp.max(z, axis=-1, keepdims=True)
                poison = valid_c & ~(xp.isfinite(top) | (top == -math.inf))[..., 0]
                if _validation.read_any(xp, poison):
                    _validation.raise_bad_rows(xp, y_c, valid_c, top[..., 0], n_classes)
            if blocks.count == 1:
                kept.append(z)
            return _core.merge(xp, part, k.block(z, y_safe, offset + off, n_classes, smoothing, top), off, count)

        part = blocks.fold(stat, _core.empty(xp, (rows, 1), dtype, dev, smoothing))
        if combine is not None:
            part = combine(part, n_local)
        rws = _core.finish(xp, part)
        bad = _validation.bad_rows(xp, y_c, valid_c, part.top[..., 0], n_classes, o_c)
        if eager and _validation.read_any(xp, bad):
            _validation.raise_bad_rows(xp, y_c, valid_c, part.top[..., 0], n_classes)
        t = _core.terms(xp, rws, o_c, n_classes, dev)
        loss_c, sc = _core.reduce(xp, t.loss, valid_c, bad, o_c, dtype)
        st = _core.stats(xp, rws, valid_c, bad, o_c, dev) if stats else None
        if not need_grad:
            return loss_c, None, None, None, st

        def grad(dh, w_k, b_k, off, count):
            z = kept.pop() if kept else logits(h_c, w_k, b_k)
            g = k.grad(z, y_safe, offset + off, n_classes, rws.m, t, sc, o_c)
            del z
            return products(g, h_c, c_c, w_k, dh, acc, off, off + count)

        dh, dw, db = blocks.each(grad, xp.zeros((rows, width), dtype=dtype, device=dev), acc)
        return loss_c, dh, dw, db, st

    step_fn = blocked_step if split else whole_step

    def step(h_c, y_c, where_c, c_c, start, acc=None):
        """One chunk: its loss, its shares of the three gradients, its statistics."""
        o_c = chunk_opts.replace(where=where_c)
        try:
            loss_c, dh_c, dw_c, db_c, st = step_fn(h_c, y_c, o_c, c_c, acc)
        except ValueError as exc:
            if not eager:
                raise
            raise ValueError(f"in the chunk of rows {start} to {start + h_c.shape[0] - 1} of the flattened "
                             f"batch (logits = hidden @ weight.T + bias): {exc}") from None
        if dh_c is not None and scale is not None:
            dh_c = dh_c * scale
        if dh_c is not None and c_c is not None:  # d/dh Σ_i c_i·loss_i: row i of G @ W times c_i
            dh_c = dh_c * c_c[:, None]
        return loss_c, dh_c, dw_c, db_c, st

    losses, pieces, parts = [], [], []
    d_hidden = d_weight = d_bias = acc = None
    if need_grad and writable:
        d_hidden = xp.empty((n, width), dtype=dtype, device=dev)
        d_weight = xp.zeros(w.shape, dtype=dtype, device=dev)
        d_bias = None if b is None else xp.zeros((n_local,), dtype=dtype, device=dev)
        acc = [d_weight, d_bias]
    done = 0  # rows handled by `scan`
    if scan is not None and n >= cs:
        kk = n // cs
        start = done = kk * cs
        xs = (xp.reshape(h[:start, ...], (kk, cs, width)), xp.reshape(y[:start], (kk, cs)),
              *(None if v is None else xp.reshape(v[:start], (kk, cs)) for v in (opts.where, cotangent)))

        def body(carry, x):
            loss_c, dh_c, dw_c, db_c, st = step(*x, start=None)
            if not need_grad:
                return carry, (loss_c, None, st)
            return (carry[0] + dw_c, None if db_c is None else carry[1] + db_c), (loss_c, dh_c, st)

        init = (None, None) if not need_grad else (
            xp.zeros(w.shape, dtype=dtype, device=dev),
            None if b is None else xp.zeros((n_local,), dtype=dtype, device=dev))
        (d_weight, d_bias), (stacked_loss, stacked_dh, stacked_st) = scan(body, init, xs)
        losses.append(xp.reshape(stacked_loss, (start,)) if opts.reduction == "none" else xp.sum(stacked_loss))
        if need_grad:
            pieces.append(xp.reshape(stacked_dh, (start, width)))
        if stats:
            parts.append(_core.Stats(*(xp.sum(v) for v in stacked_st)))
    for start, stop in _spans(done, n, cs):
        loss_c, dh_c, dw_c, db_c, st = step(h[start:stop, ...], y[start:stop],
                                            *(None if v is None else v[start:stop] for v in (opts.where, cotangent)),
                                            start, acc)
        losses.append(loss_c)
        parts.append(st)
        if not need_grad:
            continue
        if d_hidden is not None:
            d_hidden[start:stop, ...] = dh_c
        else:
            pieces.append(dh_c)
        if acc is None:
            d_weight = dw_c if d_weight is None else d_weight + dw_c
            if db_c is not None:
                d_bias = db_c if d_bias is None else d_bias + db_c

    loss = _total(xp, losses, a, dtype, dev, scale)
    if acc is not None:
        d_weight, d_bias = acc
    summary = _stats_total(xp, parts, dtype, dev) if stats else None
    if not need_grad:
        out = LinearGrads(loss, None, None, None)
        return (out, summary) if stats else out
    if d_hidden is None:
        d_hidden = xp.concat(pieces, axis=0) if pieces else xp.zeros((n, width), dtype=dtype, device=dev)
    if shard is not None:
        d_hidden = shard.sum_hidden(d_hidden)
    if d_weight is None:  # no rows
        d_weight = xp.zeros(w.shape, dtype=dtype, device=dev)
        d_bias = None if b is None else xp.zeros((n_local,), dtype=dtype, device=dev)
    elif scale is not None:
        d_weight = d_weight * scale
        d_bias = None if d_bias is None else d_bias * scale
    d_hidden = xp.reshape(xp.astype(d_hidden, a.hidden_dtype, copy=False), a.batch_shape + (width,))
    d_weight = xp.astype(d_weight, a.weight_dtype, copy=False)
    if d_bias is not None:
        d_bias = xp.astype(d_bias, a.weight_dtype, copy=False)
    out = LinearGrads(loss, d_hidden, d_weight, d_bias)
    return (out, summary) if stats else out


class _Blocks:
    """The blocks of classes of ``w`` (and ``b``), ``classes`` wide, walked by a loop or by ``scan``.

    :meth:`fold` threads a carry through the blocks (the statistics pass);
    :meth:`each` threads the ``d hidden`` carry and gathers each block's
    ``(dW, db)``, unless the step added them into ``acc``.
    """

    def __init__(self, xp, w, b, classes, scan):
        self.xp, self.w, self.b, self.classes, self.scan = xp, w, b, classes, scan
        n_local = w.shape[0]
        self.count = -(-n_local // classes)
        # Under `scan`, the whole blocks run in it and the remainder after.
        self.scanned = (n_local // classes) if scan is not None and self.count > 1 else 0
        self.rest = _spans(self.scanned * classes, n_local, classes)

    def _xs(self):
        xp, kk, c = self.xp, self.scanned, self.classes
        width = self.w.shape[1]
        ws = xp.reshape(self.w[:kk * c, ...], (kk, c, width))
        bs = None if self.b is None else xp.reshape(self.b[:kk * c], (kk, c))
        return ws, bs, xp.arange(0, kk * c, c, device=array_api_compat.device(self.w))

    def _slice(self, o, o2):
        return self.w[o:o2, ...], None if self.b is None else self.b[o:o2]

    def fold(self, fn, carry):
        if self.scanned:
            carry, _ = self.scan(lambda c, x: (fn(c, *x, self.classes), None), carry, self._xs())
        for o, o2 in self.rest:
            carry = fn(carry, *self._slice(o, o2), o, o2 - o)
        return carry

    def each(self, fn, dh, acc):
        xp, dws, dbs = self.xp, [], []
        if self.scanned:
            def body(c, x):
                c, dw, db = fn(c, *x, self.classes)
                return c, (dw, db)

            dh, (dw_s, db_s) = self.scan(body, dh, self._xs())
            dws.append(xp.reshape(dw_s, (self.scanned * self.classes, self.w.shape[1])))
            dbs.append(None if db_s is None else xp.reshape(db_s, (self.scanned * self.classes,)))
        for o, o2 in self.rest:
            dh, dw, db = fn(dh, *self._slice(o, o2), o, o2 - o)
            dws.append(dw)
            dbs.append(db)
        if acc is not None:
            return dh, None, None
        dw = dws[0] if len(dws) == 1 else xp.concat(dws, axis=0)
        db = None if self.b is None else (dbs[0] if len(dbs) == 1 else xp.concat(dbs, axis=0))
        return dh, dw, db


def _spans(start, stop, size):
    """``[start, stop)`` in pieces of ``size``, the last one widened to 2 where it would be 1.

    A compiler with dynamic shapes still specialises a size of 1 (torch's
    "0/1 specialisation"): a last chunk of one row, or block of one class,
    would compile the kernels again.  Taking one from the piece before avoids
    it (the budget holds: the widened piece is 2 ≤ ``size``).
    """
    spans = [(o, min(o + size, stop)) for o in range(start, stop, size)]
    if len(spans) > 1 and size > 2 and spans[-1][1] - spans[-1][0] == 1:
        (a, b), (_, d) = spans[-2:]
        spans[-2:] = [(a, b - 1), (b - 1, d)]
    return spans


def _total(xp, losses, a, dtype, dev, scale):
    if a.options.reduction == "none":
        flat = xp.concat(losses, axis=0) if losses else xp.zeros((0,), dtype=dtype, device=dev)
        return xp.reshape(flat, a.batch_shape)
    total = xp.asarray(0.0, dtype=dtype, device=dev) if not losses else losses[0]
    for part in losses[1:]:
        total = total + part
    return total * scale if scale is not None else total


def _stats_total(xp, parts, dtype, dev):
    if not parts:
        zero = xp.asarray(0.0, dtype=dtype, device=dev)
        return _core.Stats(zero, zero, zero, zero)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
