"""The core under torch: its array namespace, the compiled kernel and its fallback, one forward pass.

``run`` computes the loss (and gradient) of validated logits, through
``torch.compile`` (dynamic shapes: one compilation per dtype, number of
dimensions and set of options) unless a caller's compiler or ``torch.func``
transform is already tracing the call; after one compilation failure (no C++
compiler, ...) it warns and runs eagerly from then on.
"""

from __future__ import annotations

import functools
import types
import warnings

import array_api_compat.torch as _compat
import torch

from .. import _api, _core, _execution, _options, _validation

def _take_along_axis(x, indices, /, *, axis=-1):
    return torch.gather(x, axis, indices)


# array-api-compat's torch namespace, but for take_along_axis: torch.take_along_dim
# specialises every size under torch.compile(dynamic=True) (one recompilation
# per batch shape); torch.gather does not.  The core's indices are in [0, C).
xp = types.ModuleType(__name__ + ".xp")
xp.__dict__.update(vars(_compat), take_along_axis=_take_along_axis)

# The first failure of the compiled kernel (no C++ compiler, unsupported
# platform, ...): from then on the core runs eagerly, without retrying a
# compilation that costs seconds per call.
_compile_error: list[Exception] = []


def _kernel(z, y, static, operands, need_grad):
    opts = _options.Options.join(static, operands)
    return _core.compute(xp, z, y, opts, need_grad=need_grad, plan=_execution.Masked(xp, z.device, readable=False))


@functools.cache
def _compiled_kernel():
    return torch.compile(_kernel, dynamic=True)


def is_batched(t):
    # A tensor batched by torch.func.vmap (no public predicate; this one exists since torch 2.0).
    return torch._C._functorch.is_batchedtensor(t)


def check_tensors(named):
    for name, t in named:
        if not (isinstance(t, torch.Tensor) or (name == "bias" and t is None)):
            raise TypeError(f"{name} must be a torch.Tensor{' or None' if name == 'bias' else ''}, "
                            f"got {_validation.describe(t)}")


def run(logits, targets, opts, axis, compiled, need_grad):
    check_tensors([("logits", logits), ("targets", targets)])
    # Traced by torch.compile, or batched by torch.func.vmap: no value can be read.
    tracing = torch.compiler.is_compiling() or is_batched(logits) or is_batched(targets)
    if not compiled or tracing or _compile_error:
        return _api.value_and_grad(logits, targets, opts, axis=axis, need_grad=need_grad, xp=xp, traced=tracing)
    a = _validation.check_logits(logits, targets, opts, axis=axis, xp=xp)
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
        return _api.value_and_grad(logits, targets, opts, axis=axis, need_grad=need_grad, xp=xp)
    if bool(bad.any()):  # read outside the compiled graph: name the invalid row
        _core.explain(xp, a.z, a.y, opts, _execution.Masked(xp, a.z.device))
    return loss, _api.restore_layout(a, grad)
