"""γ-CE and TaiLr inside PyTorch autograd, with the core's analytic gradient.

``gamma_ce`` and ``tailr`` take the core's arguments and return a loss whose
``backward()`` uses the exact gradient computed with the value (no autograd
graph over the N×C softmax).  ``GammaCELoss`` / ``TaiLrLoss`` are the
``nn.CrossEntropyLoss``-style modules (class axis 1, ``ignore_index=-100``).

By default the core runs compiled with ``torch.compile`` (dynamic shapes:
one compilation per dtype, number of dimensions and set of options such as
``reduction`` or ``label_smoothing``); if compiling fails once (no C++
compiler, ...) it warns and runs eagerly from then on.  ``compiled=False``
runs it eagerly.  Inside a region the caller compiles
(``torch.compile(fullgraph=True)``) or batches (``torch.func.vmap``) nothing
is read back to the host: an invalid target makes its row NaN instead of
raising.  ``torch.func.grad``, ``vmap`` and ``jacrev`` work; forward mode
(``jvp``, ``hessian``) and double backward raise.

As in the core, the loss has the compute dtype (float32 for float16/bfloat16
logits) and the gradient the logits' dtype.
"""

from __future__ import annotations

import functools
import types
import warnings

import array_api_compat.torch as _compat
import torch

from .. import _api, _core, _docs, _execution, _options, _validation, linear

__all__ = ["GammaCELoss", "TaiLrLoss", "gamma_ce", "linear_gamma_ce", "linear_tailr", "tailr"]


def _take_along_axis(x, indices, /, *, axis=-1):
    return torch.gather(x, axis, indices)


# array-api-compat's torch namespace, but for take_along_axis: torch.take_along_dim
# specialises every size under torch.compile(dynamic=True) (one recompilation
# per batch shape); torch.gather does not.  The core's indices are in [0, C).
_xp = types.ModuleType(__name__ + "._xp")
_xp.__dict__.update(vars(_compat), take_along_axis=_take_along_axis)

# The first failure of the compiled kernel (no C++ compiler, unsupported
# platform, ...): from then on the core runs eagerly, without retrying a
# compilation that costs seconds per call.
_compile_error: list[Exception] = []


def _kernel(z, y, static, operands, need_grad):
    opts = _options.Options.join(static, operands)
    return _core.compute(_xp, z, y, opts, need_grad=need_grad, plan=_execution.Masked(_xp, z.device, readable=False))


@functools.cache
def _compiled_kernel():
    return torch.compile(_kernel, dynamic=True)


def _is_batched(t):
    # A tensor batched by torch.func.vmap (no public predicate; this one exists since torch 2.0).
    return torch._C._functorch.is_batchedtensor(t)


def _check_tensors(named):
    for name, t in named:
        if not (isinstance(t, torch.Tensor) or (name == "bias" and t is None)):
            raise TypeError(f"{name} must be a torch.Tensor{' or None' if name == 'bias' else ''}, "
                            f"got {_validation.describe(t)}")


def _run(logits, targets, opts, axis, compiled, need_grad):
    _check_tensors([("logits", logits), ("targets", targets)])
    # Traced by torch.compile, or batched by torch.func.vmap: no value can be read.
    tracing = torch.compiler.is_compiling() or _is_batched(logits) or _is_batched(targets)
    if not compiled or tracing or _compile_error:
        return _api.value_and_grad(logits, targets, opts, axis=axis, need_grad=need_grad, xp=_xp, traced=tracing)
    a = _validation.check_logits(logits, targets, opts, axis=axis, xp=_xp)
    # γ and b as 0-d float64 tensors: the compiled kernel traces them instead of
    # recompiling for each value (a γ schedule changes γ every step).
    as_tensor = functools.partial(torch.as_tensor, dtype=torch.float64, device=a.z.device)
    static, operands = opts.replace(gamma=as_tensor(opts.gamma), threshold=as_tensor(opts.threshold)).split()
    try:
        with torch.no_grad():  # one graph whatever the grad mode and requires_grad
            loss, grad, bad = _compiled_kernel()(a.z.detach(), a.y, static, operands, need_grad)
    except torch.cuda.OutOfMemoryError:  # (torch.OutOfMemoryError since 2.5) not a compilation problem
        raise
    except Exception as exc:  # stay correct, eagerly
        _compile_error.append(exc)
        warnings.warn(f"gammace_ref.torch: torch.compile unavailable ({type(exc).__name__}: {exc}); "
                      "running the core eagerly from now on", RuntimeWarning, stacklevel=4)
        return _api.value_and_grad(logits, targets, opts, axis=axis, need_grad=need_grad, xp=_xp)
    if bool(bad.any()):  # read outside the compiled graph: name the invalid row
        _core.explain(_xp, a.z, a.y, opts, _execution.Masked(_xp, a.z.device))
    return loss, _api.restore_layout(a, grad)


def _stored_times(stored, g):
    """The stored gradients scaled by the upstream scalar ``g`` (``None`` entries stay ``None``).

    ``loss.backward()`` on a reduced loss sends ``g = 1``: the stored gradients
    are then the answer, handed over without an N×C multiply (and, once
    released, without a copy).
    """
    if (g.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(g) and float(g) == 1.0):
        return tuple(stored)
    return tuple(None if t is None else t * g.to(t.dtype) for t in stored)


class _Loss(torch.autograd.Function):
    """Loss and gradient of the core in one pass; ``backward`` only scales the stored gradient."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, targets, opts, axis, compiled):
        return _run(logits, targets, opts, axis, compiled, need_grad=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, _, opts, axis, _ = inputs
        grad = output[1]
        ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)  # no N×C zeros for the unused second output's gradient
        ctx.save_for_backward(grad)
        # reduction="none": one loss per target, broadcast back along the class axis.
        ctx.class_axis = axis % logits.ndim if opts.reduction == "none" else None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, _):
        nothing = (None,) * 4
        if g is None:  # only the gradient output was used
            return (None, *nothing)
        if ctx.class_axis is not None:
            (grad,) = ctx.saved_tensors
            return (grad * g.unsqueeze(ctx.class_axis).to(grad.dtype), *nothing)
        return (*_stored_times(ctx.saved_tensors, g), *nothing)


def _loss(logits, targets, opts, axis, compiled):
    if torch.is_grad_enabled() and isinstance(logits, torch.Tensor) and logits.requires_grad:
        return _Loss.apply(logits, targets, opts, axis, compiled)[0]
    return _run(logits, targets, opts, axis, compiled, need_grad=False)[0]


@_docs.shared("loss")
def gamma_ce(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0, where=None,
             compiled=True):
    """γ-CE loss of :func:`gammace_ref.gamma_ce` as a differentiable torch op (the exact gradient).
    """
    opts = _validation.options_of(locals())
    return _loss(logits, targets, opts, axis, compiled)


@_docs.shared("loss")
def tailr(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None,
          label_smoothing=0.0, where=None, compiled=True):
    """TaiLr objective of :func:`gammace_ref.tailr` as a differentiable torch op (the paper's gradient).
    """
    opts = _validation.options_of(locals())
    return _loss(logits, targets, opts, axis, compiled)


class GammaCELoss(torch.nn.Module):
    """``nn.CrossEntropyLoss``-style γ-CE: input ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.

    Parameters follow torch: ``ignore_index=-100``, ``reduction="mean"``,
    ``label_smoothing=0.0``; plus ``gamma`` in [0, 1].
    """

    def __init__(self, gamma, *, ignore_index=-100, reduction="mean", label_smoothing=0.0, compiled=True):
        super().__init__()
        opts = _validation.options_of(locals())
        self.gamma, self.ignore_index, self.reduction = opts.gamma, opts.ignore_index, opts.reduction
        self.label_smoothing, self.compiled = opts.label_smoothing, compiled

    def _kw(self, input):
        return dict(axis=1 if input.ndim > 1 else 0, reduction=self.reduction, ignore_index=self.ignore_index,
                    label_smoothing=self.label_smoothing, compiled=self.compiled)

    def forward(self, input, target):
        return gamma_ce(input, target, self.gamma, **self._kw(input))

    def extra_repr(self):
        return f"gamma={self.gamma}, reduction={self.reduction!r}, ignore_index={self.ignore_index}"


class TaiLrLoss(GammaCELoss):
    """``nn.CrossEntropyLoss``-style TaiLr objective with weight ``clip(w, threshold, 1)``."""

    def __init__(self, gamma, threshold, **kwargs):
        super().__init__(gamma, **kwargs)
        self.threshold = _validation.unit_interval("threshold", threshold)

    def forward(self, input, target):
        return tailr(input, target, self.gamma, self.threshold, **self._kw(input))

    def extra_repr(self):
        return super().extra_repr() + f", threshold={self.threshold}"


# --------------------------------------------------------------------------- from hidden states


class _Linear(torch.autograd.Function):
    """:mod:`gammace_ref.linear` in autograd: the gradients come with the loss, chunk by chunk.

    ``"mean"``/``"sum"``: ``forward`` computes the loss and the three
    gradients (never N×C logits); ``backward`` scales them by the upstream
    scalar.  ``"none"``: ``forward`` computes the losses only and
    ``backward`` runs the chunks again with the upstream per-target weights.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, opts, memory_budget, chunk_size):
        ctx.opts, ctx.plan = opts, dict(memory_budget=memory_budget, chunk_size=chunk_size)
        ctx.has_bias = bias is not None
        per_row = opts.reduction == "none"
        out = linear.run(hidden, weight, bias, targets, opts, need_grad=not per_row, **ctx.plan)
        # "none": the backward pass runs the chunks again with the per-target cotangent.
        ctx.save_for_backward(*((hidden, weight, bias, targets) if per_row else (out.hidden, out.weight, out.bias)))
        return out.loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        if ctx.opts.reduction == "none":
            hidden, weight, bias, targets = ctx.saved_tensors
            out = linear.run(hidden, weight, bias if ctx.has_bias else None, targets, ctx.opts, cotangent=g,
                             **ctx.plan)
            grads = (out.hidden, out.weight, out.bias)
        else:
            grads = _stored_times(ctx.saved_tensors, g)
        grads = tuple(t if need else None for t, need in zip(grads, ctx.needs_input_grad[:3]))
        return grads + (None,) * 4


def _linear(hidden, weight, bias, targets, opts, memory_budget, chunk_size):
    _check_tensors([("hidden", hidden), ("weight", weight), ("bias", bias), ("targets", targets)])
    tracked = any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if torch.is_grad_enabled() and tracked:
        return _Linear.apply(hidden, weight, bias, targets, opts, memory_budget, chunk_size)
    return linear.run(hidden, weight, bias, targets, opts, need_grad=False, memory_budget=memory_budget,
                      chunk_size=chunk_size).loss


@_docs.shared("loss")
def linear_gamma_ce(hidden, weight, targets, gamma, *, bias=None, reduction="mean", ignore_index=None,
                    label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None):
    """γ-CE of ``F.linear(hidden, weight, bias)`` as a differentiable op, without materialising the logits.

    Gradients flow to ``hidden``, ``weight`` and ``bias``; see
    :mod:`gammace_ref.linear` (the core runs eagerly, chunk by chunk).
    """
    opts = _validation.options_of(locals())
    return _linear(hidden, weight, bias, targets, opts, memory_budget, chunk_size)


@_docs.shared("loss")
def linear_tailr(hidden, weight, targets, gamma, threshold, *, bias=None, reduction="mean", ignore_index=None,
                 label_smoothing=0.0, where=None, memory_budget=None, chunk_size=None):
    """TaiLr objective of ``F.linear(hidden, weight, bias)`` with the paper's gradient, chunk by chunk.
    """
    opts = _validation.options_of(locals())
    return _linear(hidden, weight, bias, targets, opts, memory_budget, chunk_size)
