""":mod:`gammace_ref.linear` in torch autograd: the loss from hidden states, chunk by chunk, compiled chunks.

The driver (:func:`gammace_ref.linear.fused`) runs here with torch's pieces
(:func:`kernels`): the core of a chunk through ``torch.compile`` (dynamic
shapes: one compilation per dtype and option set, whatever the number of
rows or classes; the whole-row kernel is :mod:`._kernel`'s, shared with the
logits path), the ``weight`` update as an in-place ``addmm_`` (no ``C × H``
temporary).  After one compilation failure (no C++ compiler, ...) the pieces
run eagerly from then on, with a warning, as on the logits path.

Under ``torch.autocast`` the logits product runs in the autocast dtype, as
``F.linear`` would; the chunk logits are upcast to float32 before the core,
and the losses, the gradient products and their sums stay in float32.

Inside a region that ``torch.compile`` traces, or under ``torch.func.vmap``,
the driver reads nothing back and writes nothing in place (an invalid row
becomes NaN); ``torch.func.grad`` runs it as autograd does.
"""

from __future__ import annotations

import functools
import warnings

import torch

from .. import _core, _options, _validation, linear
from ._autograd import first_order_only, stored_times
from . import _kernel
from ._kernel import _compile_error, check_tensors, is_batched, xp


def _compiled(fn, compiled=None):
    """``fn`` through ``torch.compile(dynamic=True)`` (or the cached ``compiled()``); eagerly after a failure.

    The failure is :mod:`._kernel`'s: after one, every compiled piece runs eagerly.
    """
    compiled = compiled or functools.cache(lambda: torch.compile(fn, dynamic=True))

    def call(*args):
        if not _compile_error:
            try:
                return compiled()(*args)
            except torch.cuda.OutOfMemoryError:  # not a compilation problem
                raise
            except Exception as exc:  # stay correct, eagerly
                _compile_error.append(exc)
                warnings.warn(f"gammace_ref.torch: torch.compile unavailable ({type(exc).__name__}: {exc}); "
                              "running the core eagerly from now on", RuntimeWarning, stacklevel=2)
        return fn(*args)

    return call


def _traced_core(device):
    return linear.core_kernels(xp, device, eager=False)


def _block(z, y_safe, offset, n_classes, smoothing):
    return _traced_core(z.device).block(z, y_safe, offset, n_classes, smoothing)


def _grad(z, y_safe, offset, n_classes, m, terms, scale, static):
    return _traced_core(z.device).grad(z, y_safe, offset, n_classes, m, terms, scale, static)


def _stats(z, y, static, operands):
    return _traced_core(z.device).stats(z, y, _options.Options.join(static, operands))


_compiled_block, _compiled_grad, _compiled_stats = map(_compiled, (_block, _grad, _stats))


_compiled_whole = _compiled(_kernel._kernel, _kernel._compiled_kernel)  # the logits path's kernel


def _whole(z, y, opts, need_grad):
    return _compiled_whole(z, y, *_operands(opts, z.device), need_grad)


def _operands(opts, device):
    """``opts`` split for a compiled kernel, γ and b as 0-d float64 tensors (traced: a schedule does not recompile)."""
    as_tensor = functools.partial(torch.as_tensor, dtype=torch.float64, device=device)
    return opts.replace(gamma=as_tensor(opts.gamma), threshold=as_tensor(opts.threshold)).split()


def _addmm(acc, a, b):
    return acc.addmm_(a, b)


def kernels(device, compiled: bool) -> linear.Kernels:
    """torch's pieces of a chunk for an eager call: compiled (unless ``compiled=False``), in-place products."""
    eager = linear.core_kernels(xp, device, eager=True, writable=True)
    if not compiled or _compile_error:
        return eager._replace(addmm=_addmm)

    def block(z, y_safe, offset, n_classes, smoothing, top=None):
        return _compiled_block(z, y_safe, torch.as_tensor(offset, device=z.device), n_classes, smoothing)

    def grad(z, y_safe, offset, n_classes, m, terms, scale, opts):
        static, _ = opts.split()
        return _compiled_grad(z, y_safe, torch.as_tensor(offset, device=z.device), n_classes, m, terms, scale,
                              static)

    def stats(z, y, opts):
        return _compiled_stats(z, y, *_operands(opts, z.device))

    return linear.Kernels(_whole, stats, block, grad, _addmm, checks=False)


def _tracing(*tensors):
    """Traced by torch.compile, or batched by torch.func.vmap: no value may be read, nothing written in place."""
    return torch.compiler.is_compiling() or any(t is not None and is_batched(t) for t in tensors)


def _fused(hidden, weight, bias, targets, opts, sizes, compiled, *, need_grad, stats, cotangent=None, shard=None):
    traced = _tracing(hidden, weight, bias, targets, cotangent)
    a = _validation.check_linear(hidden, weight, bias, targets, opts, memory_budget=sizes[0], chunk_size=sizes[1],
                                 xp=xp)
    k = None if traced else kernels(a.device, compiled)
    if shard is not None:  # no rank reads alone (the others would wait in a collective): after the all-reduces
        k = (k or linear.core_kernels(xp, a.device, eager=False))._replace(checks=False)
    with torch.no_grad():
        res = linear.fused(a, need_grad=need_grad, cotangent=cotangent, traced=traced, kernels=k, stats=stats,
                           shard=shard)
    return res if stats else (res, None)


SECOND_ORDER = ("gammace_ref.torch.linear_*: second derivatives (a gradient taken with create_graph=True and "
                "differentiated again: MAML, gradient penalties, Hessian-vector products) are not implemented on "
                "the hidden-states path; use the logits functions gammace_ref.torch.gamma_ce / tailr, whose second "
                "derivatives are exact")


class _Linear(torch.autograd.Function):
    """:mod:`gammace_ref.linear` in autograd: the gradients come with the loss, chunk by chunk.

    ``"mean"``/``"sum"``: ``forward`` computes the loss and the three
    gradients (never N×C logits); ``backward`` scales them by the upstream
    scalar.  ``"none"``: ``forward`` computes the losses only and
    ``backward`` runs the chunks again with the upstream per-target weights.
    Outputs: the loss, the four :class:`~gammace_ref._core.Stats` sums, and
    (not ``"none"``) the three gradients, all but the loss non-differentiable.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(hidden, weight, bias, targets, opts, sizes, compiled, stats, shard):
        per_row = opts.reduction == "none"
        out, st = _fused(hidden, weight, bias, targets, opts, sizes, compiled, need_grad=not per_row, stats=stats,
                         shard=shard)
        if st is None:  # not asked for: NaN, never a plausible number
            st = tuple(torch.full((), torch.nan, dtype=out.loss.dtype, device=out.loss.device) for _ in range(4))
        grads = () if per_row else (out.hidden, out.weight, out.weight.new_zeros(()) if out.bias is None else out.bias)
        return (out.loss, *st, *grads)

    @staticmethod
    def setup_context(ctx, inputs, output):
        hidden, weight, bias, targets, opts, sizes, compiled, _, shard = inputs
        ctx.opts, ctx.sizes, ctx.compiled, ctx.shard, ctx.has_bias = opts, sizes, compiled, shard, bias is not None
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)
        # "none": the backward pass runs the chunks again with the per-target cotangent; a graph built by
        # the backward pass (create_graph=True) leads back to the inputs
        ctx.save_for_backward(hidden, weight, bias, targets, *(() if opts.reduction == "none" else output[5:8]))

    @staticmethod
    @first_order_only(SECOND_ORDER, lambda ctx: ctx.saved_tensors[:3])
    def backward(ctx, g, *_):
        nothing = (None,) * 6
        if g is None:
            return (None,) * 3 + nothing
        if ctx.opts.reduction == "none":
            hidden, weight, bias, targets = ctx.saved_tensors
            out, _ = _fused(hidden, weight, bias if ctx.has_bias else None, targets, ctx.opts, ctx.sizes,
                            ctx.compiled, need_grad=True, stats=False, cotangent=g, shard=ctx.shard)
            grads = (out.hidden, out.weight, out.bias)
        else:
            grads = stored_times(ctx.saved_tensors[4:], g)
            grads = grads[:2] + ((grads[2],) if ctx.has_bias else (None,))
        return tuple(t if need else None for t, need in zip(grads, ctx.needs_input_grad[:3])) + nothing


def run(hidden, weight, bias, targets, opts, memory_budget, chunk_size, compiled=True, return_stats=False, shard=None):
    """The loss (and, with ``return_stats``, its :class:`~gammace_ref._core.Stats`) of the hidden-states path.

    ``shard``: this rank's slice of a vocabulary-parallel layer (:class:`gammace_ref.linear.Shard`).
    """
    check_tensors([("hidden", hidden), ("weight", weight), ("bias", bias), ("targets", targets)])
    for name, flag in (("compiled", compiled), ("return_stats", return_stats)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {_validation.describe(flag)} {flag!r}")
    sizes = (memory_budget, chunk_size)
    tracked = any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if torch.is_grad_enabled() and tracked:
        out = _Linear.apply(hidden, weight, bias, targets, opts, sizes, compiled, return_stats, shard)
        loss, st = out[0], _core.Stats(*out[1:5])
    else:
        res, st = _fused(hidden, weight, bias, targets, opts, sizes, compiled, need_grad=False, stats=return_stats,
                         shard=shard)
        loss = res.loss
    return (loss, st) if return_stats else loss

