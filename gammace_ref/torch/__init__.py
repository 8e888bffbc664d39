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

from .. import _core, _validation, linear

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


def _kernel(z, y, gamma, threshold, tailr, need_grad, reduction, ignore_index, label_smoothing):
    return _core.compute(_xp, z, y, gamma, threshold, tailr=tailr, need_grad=need_grad, reduction=reduction,
                         ignore_index=ignore_index, label_smoothing=label_smoothing, check_values=False,
                         device=z.device)


@functools.cache
def _compiled_kernel():
    return torch.compile(_kernel, dynamic=True)


def _scalar(v, like):
    # γ and b as 0-d float64 tensors: a compiled kernel traces them instead of
    # recompiling for each value (a γ schedule changes γ every step).
    return torch.as_tensor(v, dtype=torch.float64, device=like.device)


def _is_batched(t):
    # A tensor batched by torch.func.vmap (no public predicate; this one exists since torch 2.0).
    return torch._C._functorch.is_batchedtensor(t)


def _run(logits, targets, gamma, threshold, tailr, axis, reduction, ignore_index, label_smoothing, compiled,
         need_grad):
    for name, t in (("logits", logits), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {_validation._describe(t)}")
    a = _validation.check(logits, targets, gamma, threshold, axis=axis, reduction=reduction,
                          ignore_index=ignore_index, label_smoothing=label_smoothing, xp=_xp)
    # Traced by torch.compile, or batched by torch.func.vmap: no value can be read.
    tracing = torch.compiler.is_compiling() or _is_batched(logits) or _is_batched(targets)
    compiled = compiled and not tracing and not _compile_error
    if compiled:
        try:
            with torch.no_grad():  # one graph whatever the grad mode and requires_grad
                loss, grad = _compiled_kernel()(a.z.detach(), a.y, _scalar(a.gamma, a.z), _scalar(a.threshold, a.z),
                                                tailr, need_grad, a.reduction, a.ignore_index, a.label_smoothing)
        except torch.cuda.OutOfMemoryError:  # (torch.OutOfMemoryError since 2.5) not a compilation problem
            raise
        except Exception as exc:  # stay correct, eagerly
            _compile_error.append(exc)
            warnings.warn(f"gammace_ref.torch: torch.compile unavailable ({type(exc).__name__}: {exc}); "
                          "running the core eagerly from now on", RuntimeWarning, stacklevel=4)
            compiled = False
        else:
            if bool(torch.isnan(loss).any()):  # an invalid row: let the eager checks name it
                _core.compute(a.xp, a.z, a.y, a.gamma, a.threshold, tailr=tailr, need_grad=False,
                              reduction=a.reduction, ignore_index=a.ignore_index,
                              label_smoothing=a.label_smoothing)
    if not compiled:
        loss, grad = _core.compute(_xp, a.z, a.y, a.gamma, a.threshold, tailr=tailr, need_grad=need_grad,
                                   reduction=a.reduction, ignore_index=a.ignore_index,
                                   label_smoothing=a.label_smoothing, check_values=not tracing,
                                   device=a.z.device)
    return loss, (None if grad is None else _core.restore_layout(a, grad))


class _Loss(torch.autograd.Function):
    """Loss and gradient of the core in one pass; ``backward`` only scales the stored gradient."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, targets, gamma, threshold, tailr, axis, reduction, ignore_index, label_smoothing,
                compiled):
        return _run(logits, targets, gamma, threshold, tailr, axis, reduction, ignore_index, label_smoothing,
                    compiled, need_grad=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, axis, reduction = inputs[0], inputs[5], inputs[6]
        grad = output[1]
        ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)  # no N×C zeros for the unused second output's gradient
        ctx.save_for_backward(grad)
        # reduction="none": one loss per target, broadcast back along the class axis.
        ctx.class_axis = axis % logits.ndim if reduction == "none" else None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, _):
        (grad,) = ctx.saved_tensors
        if g is None:  # only the gradient output was used
            return (None,) * 10
        if ctx.class_axis is not None:
            g = g.unsqueeze(ctx.class_axis)
        elif (g.device.type == "cpu" and not torch.compiler.is_compiling()
              and not torch._C._functorch.is_functorch_wrapped_tensor(g) and float(g) == 1.0):
            # loss.backward() on a reduced loss: the stored gradient is the answer, handed
            # over without an N×C multiply (and, once released, without a copy).
            return (grad,) + (None,) * 9
        return (grad * g.to(grad.dtype),) + (None,) * 9


def _loss(*args):
    logits = args[0]
    if torch.is_grad_enabled() and isinstance(logits, torch.Tensor) and logits.requires_grad:
        return _Loss.apply(*args)[0]
    return _run(*args, need_grad=False)[0]


def gamma_ce(logits, targets, gamma, *, axis=-1, reduction="mean", ignore_index=None, label_smoothing=0.0,
             compiled=True):
    """γ-CE loss of :func:`gammace_ref.gamma_ce` as a differentiable torch op."""
    return _loss(logits, targets, gamma, 0.0, False, axis, reduction, ignore_index, label_smoothing, compiled)


def tailr(logits, targets, gamma, threshold, *, axis=-1, reduction="mean", ignore_index=None,
          label_smoothing=0.0, compiled=True):
    """TaiLr objective of :func:`gammace_ref.tailr` as a differentiable torch op (the paper's gradient)."""
    return _loss(logits, targets, gamma, threshold, True, axis, reduction, ignore_index, label_smoothing,
                 compiled)


class GammaCELoss(torch.nn.Module):
    """``nn.CrossEntropyLoss``-style γ-CE: input ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.

    Parameters follow torch: ``ignore_index=-100``, ``reduction="mean"``,
    ``label_smoothing=0.0``; plus ``gamma`` in [0, 1].
    """

    def __init__(self, gamma, *, ignore_index=-100, reduction="mean", label_smoothing=0.0, compiled=True):
        super().__init__()
        self.gamma = _validation.unit_interval("gamma", gamma)
        _validation.smoothing(label_smoothing)
        if reduction not in _validation.REDUCTIONS:
            raise ValueError(f"reduction must be one of {_validation.REDUCTIONS}, got {reduction!r}")
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.compiled = label_smoothing, compiled

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
    def forward(ctx, hidden, weight, bias, targets, *args):
        ctx.args = args  # gamma, threshold, tailr, reduction, ignore_index, label_smoothing, budget, chunk
        ctx.has_bias = bias is not None
        if args[3] == "none":
            out = linear._run(hidden, weight, bias, targets, *args[:3], False, *args[3:])
            ctx.save_for_backward(hidden, weight, bias, targets)
        else:
            out = linear._run(hidden, weight, bias, targets, *args[:3], True, *args[3:])
            ctx.save_for_backward(out.hidden, out.weight, out.bias)
        return out.loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        args = ctx.args
        if args[3] == "none":
            hidden, weight, bias, targets = ctx.saved_tensors
            out = linear._run(hidden, weight, bias if ctx.has_bias else None, targets, *args[:3], True, *args[3:],
                              cotangent=g)
            grads = (out.hidden, out.weight, out.bias)
        elif (g.device.type == "cpu" and not torch.compiler.is_compiling()
              and not torch._C._functorch.is_functorch_wrapped_tensor(g) and float(g) == 1.0):
            grads = ctx.saved_tensors  # loss.backward(): the stored gradients are the answer, without a copy
        else:
            grads = tuple(None if t is None else t * g.to(t.dtype) for t in ctx.saved_tensors)
        grads = tuple(t if need else None for t, need in zip(grads, ctx.needs_input_grad[:3]))
        return grads + (None,) * (1 + len(args))


def _linear(hidden, weight, bias, targets, *args):
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias), ("targets", targets)):
        if not (isinstance(t, torch.Tensor) or (name == "bias" and t is None)):
            raise TypeError(f"{name} must be a torch.Tensor{' or None' if name == 'bias' else ''}, "
                            f"got {_validation._describe(t)}")
    tracked = any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if torch.is_grad_enabled() and tracked:
        return _Linear.apply(hidden, weight, bias, targets, *args)
    return linear._run(hidden, weight, bias, targets, *args[:3], False, *args[3:]).loss


def linear_gamma_ce(hidden, weight, targets, gamma, *, bias=None, reduction="mean", ignore_index=None,
                    label_smoothing=0.0, memory_budget=None, chunk_size=None):
    """γ-CE of ``F.linear(hidden, weight, bias)`` as a differentiable op, without materialising the logits.

    ``hidden`` ``(..., H)``, ``weight`` ``(C, H)``, ``bias`` ``(C,)`` or
    ``None``, ``targets`` of ``hidden``'s leading shape.  Gradients flow to
    ``hidden``, ``weight`` and ``bias``; see :mod:`gammace_ref.linear` (the
    core runs eagerly, chunk by chunk).
    """
    return _linear(hidden, weight, bias, targets, gamma, 0.0, False, reduction, ignore_index, label_smoothing,
                   memory_budget, chunk_size)


def linear_tailr(hidden, weight, targets, gamma, threshold, *, bias=None, reduction="mean", ignore_index=None,
                 label_smoothing=0.0, memory_budget=None, chunk_size=None):
    """TaiLr objective of ``F.linear(hidden, weight, bias)`` with the paper's gradient, chunk by chunk."""
    return _linear(hidden, weight, bias, targets, gamma, threshold, True, reduction, ignore_index, label_smoothing,
                   memory_budget, chunk_size)
