"""The core under torch: its array namespace, the compiled kernel and its fallback, one forward pass.

``run`` computes the loss (and gradient) of validated logits through
``torch.compile`` unless a caller's compiler or ``torch.func`` transform is
already tracing the call (:func:`is_traced`, decided per call: not
``torch.compiler.is_compiling()``, which is True in every thread while any
thread compiles).

One compiled graph per *signature*: the logits' dtype, number of dimensions,
device type and contiguity (a class axis moved last is strided), whether the
gradient is wanted, and the options that change the graph -- ``reduction``,
``tailr``, whether ``ignore_index``, ``label_smoothing`` and ``where`` are
given.  γ, the threshold, ε and the ``ignore_index`` value are traced
operands (a γ schedule recompiles nothing); every dimension is unbacked,
with the compiling call's sizes as inductor's hints, so no size is
specialised (dynamo's 0/1 specialisation, inductor's C > 4096 guard): one
graph for every batch shape and every number of classes, 1 included.  (An
empty batch runs eagerly: nothing to compute.)  Each signature is its own compiled region
(``isolate_recompiles``): the 8 recompilations dynamo allows a region are
never shared out among the signatures.  Each compilation is announced once at
INFO on the ``gammace_ref`` logger; :func:`warmup` compiles ahead.  After a
genuine compilation failure (no C++ compiler, ...) it warns and runs eagerly
from then on; an out-of-memory error is re-raised and changes nothing.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import types
import warnings

import array_api_compat.torch as _compat
import torch
from torch._subclasses.fake_tensor import is_fake

from .. import _api, _core, _execution, _options, _validation

log = logging.getLogger("gammace_ref")


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


class _Kernels:
    """The compiled kernel: one ``torch.compile`` region per signature (see the module docstring)."""

    def __init__(self):
        self.regions: dict = {}
        self._lock = threading.Lock()

    def __call__(self, z, y, static, operands, need_grad):
        key = signature(z, static, operands, need_grad)
        entry = self.regions.get(key)
        if entry is None:
            with self._lock:
                entry = self.regions.get(key)
                if entry is None:
                    log.info("gammace_ref.torch: compiling the core with torch.compile for %s (the first call "
                             "with these; seconds to a minute; later calls of any batch size reuse it; "
                             "gammace_ref.torch.warmup compiles ahead)", describe(key))
                    region = torch.compile(_kernel, dynamic=True, fullgraph=True, isolate_recompiles=True)
                    entry = self.regions[key] = (region, tuple(max(n, 2) for n in z.shape))
        region, hints = entry
        # Every dimension unbacked: no size specialisation (N = 1, C = 1, C > 4096) makes a graph of its
        # own.  The compiling call's sizes are inductor's hints (without any, 14% slower at 4096x32000).
        for t in (z, y) + tuple(o for o in operands if o is not None and o.ndim):
            for dim, hint in enumerate(hints[:t.ndim]):
                torch._dynamo.decorators.mark_unbacked(t, dim, hint_override=hint)
        return region(z, y, static, operands, need_grad)


def signature(z, static, operands, need_grad) -> tuple:
    """What selects a compiled graph: the static options, which operands are given, and the logits' kind.

    (Whether the logits are contiguous too: a class axis moved last, or a
    slice, is a strided input, which dynamo compiles apart.)
    """
    given = tuple(o is not None for o in operands)
    return (static, given, bool(need_grad), z.dtype, z.ndim, z.device.type, z.is_contiguous())


def describe(key) -> str:
    static, given, need_grad, dtype, ndim, device, contiguous = key
    named = dict(zip(_options.Options.OPERANDS, given))
    opts = [f"reduction={static.reduction!r}", "TaiLr" if static.tailr else "γ-CE",
            "ignore_index" if named["ignore_index"] else "no ignore_index",
            "label smoothing" if named["label_smoothing"] else "no label smoothing"]
    if named["where"]:
        opts.append("where")
    return (f"{'' if contiguous else 'strided '}{str(dtype).removeprefix('torch.')} logits with {ndim} "
            f"dimension(s) on {device}, "
            f"{'value and gradient' if need_grad else 'value only'}, "
            + ", ".join(opts))


@functools.cache
def _compiled_kernel():
    return _Kernels()


def is_batched(t):
    # A tensor batched by torch.func.vmap (no public predicate; this one exists since torch 2.0).
    return torch._C._functorch.is_batchedtensor(t)


def is_traced(*tensors) -> bool:
    """Whether this call is traced, so that no value may be read back: decided per call, per thread.

    Traced by dynamo (``torch.compile``, strict ``torch.export``:
    ``is_dynamo_compiling`` is a constant True in a trace, False when run),
    by make_fx / AOTAutograd (fake tensors), or batched by ``torch.func.vmap``.
    Not ``torch.compiler.is_compiling()``: a process-wide flag, True in every
    thread while any thread compiles (issue 16, item 1).
    """
    if torch.compiler.is_dynamo_compiling():
        return True
    return any(isinstance(t, torch.Tensor) and (is_fake(t) or is_batched(t)) for t in tensors)


def in_vmap() -> bool:
    """Inside a ``torch.func.vmap`` level (``vmap``, ``jacfwd``, ``hessian``), whatever the inputs.

    Dynamo refuses to compile there ("unsupported functorch tracing
    attempt"), also for a call whose own tensors are not batched (the primal
    logits under ``jacfwd``): such a call runs the core eagerly, its values
    readable.
    """
    from torch._functorch import pyfunctorch

    vmap = torch._C._functorch.TransformType.Vmap
    return any(i.key() == vmap for i in pyfunctorch.retrieve_all_functorch_interpreters())


def out_of_memory(exc: BaseException) -> bool:
    """An allocation failure (CUDA's ``OutOfMemoryError``, CPU's allocator ``RuntimeError``), not a compile failure."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, torch._dynamo.exc.TorchDynamoException) or not isinstance(exc, RuntimeError):
        return False
    message = str(exc).lower()
    return "can't allocate memory" in message or "out of memory" in message


def check_tensors(named):
    for name, t in named:
        if not (isinstance(t, torch.Tensor) or (name == "bias" and t is None)):
            raise TypeError(f"{name} must be a torch.Tensor{' or None' if name == 'bias' else ''}, "
                            f"got {_validation.describe(t)}")


def _operands(opts, device):
    """``opts`` split for the compiled kernel: γ, b, ε (if not 0) and the ``ignore_index`` value as 0-d tensors.

    Traced instead of static, they cost no recompilation when they change
    (a γ schedule changes γ every step).
    """
    as_float = functools.partial(torch.as_tensor, dtype=torch.float64, device=device)
    traced = dict(gamma=as_float(opts.gamma), threshold=as_float(opts.threshold))
    if _core.smoothing_on(opts):
        traced["label_smoothing"] = as_float(opts.label_smoothing)
    if opts.ignore_index is not None:
        traced["ignore_index"] = torch.as_tensor(opts.ignore_index, dtype=torch.int64, device=device)
    if opts.where is not None:  # (a new tensor object: the kernel marks its dimensions, not the caller's)
        traced["where"] = opts.where.detach().contiguous()
    return opts.replace(**traced).split()


def run(logits, targets, opts, axis, compiled, need_grad):
    check_tensors([("logits", logits), ("targets", targets)])
    # Traced by a compiler, or batched by torch.func.vmap: no value can be read.
    tracing = is_traced(logits, targets)
    if not compiled or tracing or _compile_error or in_vmap():
        # Eagerly the gradient is the core's, not autograd's: detached, the core may work in place.
        return _api.value_and_grad(logits if tracing else logits.detach(), targets, opts, axis=axis,
                                   need_grad=need_grad, xp=xp, traced=tracing)
    a = _validation.check_logits(logits, targets, opts, axis=axis, xp=xp)
    if a.z.numel() == 0:  # nothing to compute: no graph for an empty batch (dynamo would guard on its strides)
        return _api.value_and_grad(logits.detach(), targets, opts, axis=axis, need_grad=need_grad, xp=xp)
    static, operands = _operands(a.options, a.z.device)
    try:
        with torch.no_grad():  # one graph whatever the grad mode and requires_grad
            y = a.y.detach().contiguous()  # targets are O(N): any layout (an expanded tensor) becomes one
            loss, grad, bad = _compiled_kernel()(a.z.detach(), y, static, operands, need_grad)
    except Exception as exc:  # stay correct, eagerly -- unless memory ran out, which is no compile failure
        if out_of_memory(exc):
            raise
        _compile_error.append(exc)
        warnings.warn(f"gammace_ref.torch: torch.compile unavailable ({type(exc).__name__}: {exc}); "
                      "running the core eagerly from now on", RuntimeWarning, stacklevel=4)
        return _api.value_and_grad(logits.detach(), targets, opts, axis=axis, need_grad=need_grad, xp=xp)
    if bool(bad.any()):  # read outside the compiled graph: name the invalid row
        _core.explain(xp, a.z, a.y, opts, _execution.Masked(xp, a.z.device))
    return loss, _api.restore_layout(a, grad)


def _as_tuple(v):
    return tuple(v) if isinstance(v, (list, tuple, set)) else (v,)


def warmup(dtypes=(torch.float32,), ranks=(2,), *, reduction=("mean",), ignore_index=(-100,),
           label_smoothing=(0.0,), tailr=(False,), where=(False,), grad=(True, False), device="cpu") -> int:
    """Compile the core ahead for every combination of the given values; return how many graphs it compiled.

    Each keyword takes one value or a sequence: ``dtypes`` (torch float
    dtypes of the logits), ``ranks`` (their numbers of dimensions),
    ``reduction``, ``ignore_index`` (``None`` or any int: only whether one is
    given matters), ``label_smoothing`` (only zero or not matters), ``tailr``
    (γ-CE and/or TaiLr), ``where`` (whether a ``where`` mask is given),
    ``grad`` (True: a loss that is differentiated; False: evaluation under
    ``torch.no_grad()`` or of a tensor without ``requires_grad``) and
    ``device``.  A graph already compiled is not compiled again.  Later
    calls with these settings, any batch shape and any number of classes,
    then compile nothing.

    Examples
    --------
    >>> import torch
    >>> from gammace_ref import torch as GT
    >>> n = GT.warmup(dtypes=torch.float64, ranks=2, reduction="sum", grad=False)  # doctest: +SKIP
    """
    kernels = _compiled_kernel()
    before = len(kernels.regions)
    combos = itertools.product(_as_tuple(dtypes), _as_tuple(ranks), _as_tuple(reduction), _as_tuple(ignore_index),
                               _as_tuple(label_smoothing), _as_tuple(tailr), _as_tuple(where), _as_tuple(grad))
    for dtype, rank, red, ii, eps, is_tailr, has_where, need_grad in combos:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"ranks must hold positive ints, got {rank!r}")
        shape = (2,) * (rank - 1) + (3,)
        z = torch.zeros(shape, dtype=dtype, device=device)
        y = torch.zeros(shape[:-1], dtype=torch.int64, device=device)
        opts = _validation.options(0.5, 0.0, tailr=is_tailr, reduction=red, ignore_index=ii, label_smoothing=eps,
                                   where=torch.ones(shape[:-1], dtype=torch.bool, device=device) if has_where else None)
        run(z, y, opts, -1, True, need_grad=bool(need_grad))
        if _compile_error:
            raise RuntimeError("gammace_ref.torch.warmup: torch.compile is unavailable here "
                               f"({type(_compile_error[0]).__name__}: {_compile_error[0]}); the core runs eagerly")
    return len(kernels.regions) - before
