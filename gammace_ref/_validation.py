"""Every argument check of gammace_ref, in one place.

Each check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right
kind, wrong value) with a message that names the argument and the value.
Small checks (:func:`unit_interval`, :func:`namespace`, ...) build the two
entry points, :func:`check_logits` and :func:`check_linear`, and the
:class:`~gammace_ref._options.Options` constructor :func:`options`.

The checks that need array *values* (targets in range, a finite row maximum)
cannot run on a traced array (``jax.jit``, a compiler's trace), and reading a
value forces a device synchronisation.  So the core never reads: it marks
the offending rows (:func:`bad_rows`) and turns them into NaN, never into a
plausible number; an eager caller then reads that mask once and, if any row
is marked, :func:`raise_bad_rows` names the first one.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import array_api_compat

from ._options import Options

REDUCTIONS = ("none", "mean", "sum")


# --------------------------------------------------------------------------- small checks


def describe(x: Any) -> str:
    """The type of ``x`` as an error message names it (``numpy.ndarray``, ``str``)."""
    mod = type(x).__module__
    return type(x).__qualname__ if mod == "builtins" else f"{mod}.{type(x).__qualname__}"


def is_array(x: Any) -> bool:
    """``x`` is an array of an array-API library (not a Python or NumPy scalar)."""
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, numbers.Number)


def _real_scalar(name: str, value: Any, what: str) -> Any:
    """``value`` as a Python float, or a traced 0-d array left as is; ``what`` says the range for messages.

    A real number (not a bool), or a 0-d array of a real floating or integer
    dtype (not bool, complex, string, object, datetime) whose value can be
    read; a traced array (``jax.jit``) cannot be read and is returned.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError) as exc:  # numpy.timedelta64 is an Integral without a float value
            raise TypeError(f"{name} must be {what}, got {describe(value)} {value!r}") from exc
    if not is_array(value):
        raise TypeError(f"{name} must be {what}, got {describe(value)} {value!r}")
    try:
        real = array_api_compat.array_namespace(value).isdtype(value.dtype, ("real floating", "integral"))
    except Exception:  # a dtype outside the standard (string, object, datetime64): not a real number
        real = False
    if not real:
        raise TypeError(f"{name} must be {what}, got {describe(value)} of dtype {value.dtype}")
    if getattr(value, "ndim", 0) != 0:
        raise ValueError(f"{name} must be a scalar or a 0-d array, got shape {tuple(value.shape)}")
    try:
        return float(value)
    except TypeError:  # traced (jax.jit: ConcretizationTypeError): no value to check
        return value
    except Exception as exc:  # no value to read (a meta tensor, ...)
        raise TypeError(f"{name} must be {what} with a value, got {describe(value)} whose value cannot be "
                        f"read ({type(exc).__name__}: {exc})") from exc


def unit_interval(name: str, value: Any) -> Any:
    """``value`` as a Python float in [0, 1], or a traced 0-d array left as is (out of range: NaN in the core)."""
    v = _real_scalar(name, value, "a real number in [0, 1]")
    if isinstance(v, float) and not 0.0 <= v <= 1.0:  # also catches NaN
        raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    return v


def smoothing(value: Any) -> Any:
    """``label_smoothing`` as a Python float in [0, 1), or a traced 0-d array left as is."""
    v = _real_scalar("label_smoothing", value, "a real number in [0, 1)")
    if isinstance(v, float) and not 0.0 <= v < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {v!r}")
    return v


def check_reduction(value: Any) -> str:
    if value not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {value!r}")
    return value


def check_ignore_index(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"ignore_index must be an int or None, got {describe(value)} {value!r}")
    return None if value is None else int(value)


def integer(name: str, value: Any, what: str = "an int") -> int:
    """``value`` as a Python int (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {describe(value)} {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    value = integer(name, value, "a positive int")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def options(gamma, threshold=0.0, *, tailr=False, reduction="mean", ignore_index=None,
            label_smoothing=0.0, where=None) -> Options:
    """The checked :class:`~gammace_ref._options.Options` of a loss call (``where``'s shape: by the entry points)."""
    if where is not None and not is_array(where):
        raise TypeError(f"where must be None or a boolean array, got {describe(where)}")
    return Options(gamma=unit_interval("gamma", gamma), threshold=unit_interval("threshold", threshold),
                   tailr=bool(tailr), reduction=check_reduction(reduction),
                   ignore_index=check_ignore_index(ignore_index),
                   label_smoothing=smoothing(label_smoothing), where=where)


def options_of(arguments: dict) -> Options:
    """The checked options of a public loss function, from its arguments (``locals()`` at its top).

    TaiLr functions are those with a ``threshold`` argument.  A new option is
    a field of :class:`~gammace_ref._options.Options`, its check in
    :func:`options` and a keyword of the public functions: nothing positional.
    """
    names = ("gamma", "threshold", "reduction", "ignore_index", "label_smoothing", "where")
    return options(**{k: arguments[k] for k in names if k in arguments}, tailr="threshold" in arguments)


def check_where(xp, opts: Options, shape: tuple) -> Options:
    """``opts`` with ``where`` checked (boolean, of ``shape``: the targets') and reshaped to ``shape``."""
    if opts.where is None:
        return opts
    where = opts.where
    if where.dtype != xp.bool:
        raise TypeError(f"where must have a boolean dtype, got {where.dtype}")
    if tuple(where.shape) != tuple(shape):
        raise ValueError(f"where shape {tuple(where.shape)} does not match targets shape {tuple(shape)}")
    return opts


def namespace(named: list, xp=None):
    """``(xp, device)`` of the ``(name, array)`` pairs: arrays of one library, on one device.

    An adapter that has checked the arrays' type passes its namespace as
    ``xp`` (no namespace inference: nothing for a tracing compiler to trace).
    A device of ``None`` (a traced array: placement unknown) matches any.
    """
    if xp is None:
        for name, arr in named:
            if not is_array(arr):
                raise TypeError(f"{name} must be an array of an array-API library, got {describe(arr)}")
        try:
            xp = array_api_compat.array_namespace(*(a for _, a in named))
        except TypeError as exc:
            kinds = " and ".join(f"{n} ({describe(a)})" for n, a in named)
            raise TypeError(f"{kinds} must come from the same array library") from exc
        devices = [(n, array_api_compat.device(a)) for n, a in named]
    else:
        devices = [(n, a.device) for n, a in named]
    known = [(n, d) for n, d in devices if d is not None]
    for n, d in known[1:]:
        if d != known[0][1]:
            raise ValueError(f"{known[0][0]} (on device {known[0][1]}) and {n} (on device {d}) "
                             "must be on the same device")
    return xp, devices[0][1]


def real_floating(xp, name: str, arr) -> None:
    if not xp.isdtype(arr.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {arr.dtype}")


def integral(xp, name: str, arr) -> None:
    if not xp.isdtype(arr.dtype, "integral"):
        raise TypeError(f"{name} must have an integer dtype (class indices), got {arr.dtype}")


def check_narrowing(name: str, original, dtype) -> None:
    """Raise ``ValueError`` if the integer array ``original`` holds a value that ``dtype`` cannot (a conversion would wrap it).

    For adapters that convert their callers' arrays (JAX without
    ``jax_enable_x64`` makes int64 targets int32: 2**32 + 1 would become 1).
    """
    xp = array_api_compat.array_namespace(original)
    if not xp.isdtype(original.dtype, "integral") or original.size == 0:
        return
    info = xp.iinfo(dtype)
    outside = (original < info.min) | (original > info.max)
    if bool(xp.any(outside)):
        idx, val = _first(xp, outside, original)
        raise ValueError(f"{name}: value {val} at index {idx} does not fit {dtype}, the dtype it would be "
                         f"converted to (it would wrap to another value)")


def compute_dtype(xp, dtype, name="logits"):
    """float32 and float64 compute in themselves; narrower floats (float16, bfloat16) in float32.

    A wider float (``longdouble``) raises: computing it in float32 or float64
    would silently drop the precision its caller chose.
    """
    if dtype in (xp.float32, xp.float64):
        return dtype
    if xp.finfo(dtype).bits > 64:
        raise TypeError(f"{name} has dtype {dtype}, wider than float64: gammace_ref computes in float32 or "
                        f"float64; convert {name} to float64 to compute in float64")
    return xp.float32


def _index_targets(xp, targets, device, n_classes: int, ignore_index):
    """``targets`` as the index dtype; a value beyond its range (uint64 ≥ 2**63) becomes an out-of-range class.

    A plain conversion would wrap 2**64 - 1 to -1, which ``ignore_index=-1``
    would then silently ignore.  The replacement is ``n_classes`` (or
    ``n_classes + 1`` if that is ``ignore_index``): invalid, so the row raises
    (or is NaN where nothing can be read).
    """
    dtype = index_dtype(xp, device)
    y = xp.astype(targets, dtype, copy=False)
    if xp.iinfo(targets.dtype).max > xp.iinfo(dtype).max:
        too_big = targets > xp.iinfo(dtype).max
        if read_any(xp, too_big):  # values can be read: name the first
            _raise_out_of_range(xp, too_big, targets, n_classes)
        invalid = n_classes if ignore_index != n_classes else n_classes + 1
        y = xp.where(too_big, xp.asarray(invalid, dtype=dtype, device=device), y)
    return y


def index_dtype(xp, device):
    """The namespace's default indexing dtype on ``device``."""
    return xp.__array_namespace_info__().default_dtypes(device=device)["indexing"]


# --------------------------------------------------------------------------- entry points


@dataclass(frozen=True)
class Checked:
    """Validated inputs of the loss functions on logits, ready for the core.

    ``z`` holds the logits in the compute dtype with the class axis moved last,
    ``y`` the targets as the namespace's index dtype; ``axis`` and
    ``out_dtype`` are the logits' own class axis and dtype.
    """

    xp: Any
    z: Any
    y: Any
    axis: int
    out_dtype: Any
    options: Options
    device: Any


def check_logits(logits, targets, opts: Options, *, axis, xp=None) -> Checked:
    """Validate ``logits`` (real floating, class axis ``axis``) and ``targets`` (integer, the rest of the shape)."""
    where = [("where", opts.where)] if opts.where is not None else []
    xp, device = namespace([("logits", logits), ("targets", targets)] + where, xp)
    real_floating(xp, "logits", logits)
    integral(xp, "targets", targets)
    if logits.ndim < 1:
        raise ValueError("logits must have at least one dimension (the class axis), got a 0-d array")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {describe(axis)} {axis!r}")
    if not -logits.ndim <= axis < logits.ndim:
        raise ValueError(f"axis {axis} is out of range for logits with {logits.ndim} dimension(s)")
    axis = int(axis) % logits.ndim
    if logits.shape[axis] == 0:
        raise ValueError(f"logits has no classes: its class axis {axis} has size 0")
    expected = tuple(logits.shape[:axis]) + tuple(logits.shape[axis + 1:])
    if tuple(targets.shape) != expected:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape)} "
            f"without class axis {axis}: expected {expected}"
        )
    z = xp.astype(logits, compute_dtype(xp, logits.dtype), copy=False)
    if axis != logits.ndim - 1:
        z = xp.moveaxis(z, axis, -1)
    y = _index_targets(xp, targets, device, logits.shape[axis], opts.ignore_index)
    opts = check_where(xp, opts, expected)
    return Checked(xp=xp, z=z, y=y, axis=axis, out_dtype=logits.dtype, options=opts, device=device)


@dataclass(frozen=True)
class CheckedLinear:
    """Validated inputs of :mod:`gammace_ref.linear`, ready for its chunked driver.

    ``h`` is ``hidden`` flattened to ``(N, H)``, ``w`` the ``(C, H)`` weight and
    ``b`` the ``(C,)`` bias or ``None``, all in the compute dtype (float32 for
    narrower floats); ``y`` the ``(N,)`` targets in the index dtype;
    ``batch_shape`` the leading shape of ``hidden`` (that of ``targets``);
    ``memory_budget`` and ``chunk_size`` positive ints or ``None``.
    """

    xp: Any
    h: Any
    w: Any
    b: Any
    y: Any
    batch_shape: tuple
    hidden_dtype: Any
    weight_dtype: Any
    options: Options
    memory_budget: int | None
    chunk_size: int | None
    device: Any


def check_linear(hidden, weight, bias, targets, opts: Options, *, memory_budget, chunk_size,
                 xp=None) -> CheckedLinear:
    """Validate the arguments of the ``gammace_ref.linear`` functions.

    ``hidden`` ``(..., H)`` and ``weight`` ``(C, H)`` of one real floating
    dtype, ``bias`` ``None`` or ``(C,)`` of that dtype, ``targets`` integer of
    ``hidden``'s leading shape, all of one library and on one device.
    """
    named = [("hidden", hidden), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    where = [("where", opts.where)] if opts.where is not None else []
    xp, device = namespace(named + [("targets", targets)] + where, xp)
    for name, arr in named:
        real_floating(xp, name, arr)
        if arr.dtype != hidden.dtype:
            raise TypeError(f"{name} dtype {arr.dtype} differs from hidden dtype {hidden.dtype}: "
                            "give them one dtype")
    integral(xp, "targets", targets)
    if hidden.ndim < 1:
        raise ValueError("hidden must have at least one dimension (the hidden axis, last), got a 0-d array")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-d (classes, hidden), got shape {tuple(weight.shape)}")
    n_classes, width = weight.shape
    if n_classes == 0:
        raise ValueError(f"weight has no classes: shape {tuple(weight.shape)}")
    if hidden.shape[-1] != width:
        raise ValueError(f"hidden shape {tuple(hidden.shape)} does not match weight shape {tuple(weight.shape)}: "
                         f"the last axis of hidden must have weight.shape[1] = {width} entries")
    if bias is not None and tuple(bias.shape) != (n_classes,):
        raise ValueError(f"bias shape {tuple(bias.shape)} does not match weight shape {tuple(weight.shape)}: "
                         f"expected ({n_classes},)")
    batch_shape = tuple(hidden.shape[:-1])
    if tuple(targets.shape) != batch_shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match hidden shape "
                         f"{tuple(hidden.shape)} without its last axis: expected {batch_shape}")
    compute = compute_dtype(xp, hidden.dtype, "hidden")
    n_rows = 1
    for s in batch_shape:
        n_rows *= s
    opts = check_where(xp, opts, batch_shape)
    if opts.where is not None:
        opts = opts.replace(where=xp.reshape(opts.where, (n_rows,)))
    return CheckedLinear(
        xp=xp,
        h=xp.reshape(xp.astype(hidden, compute, copy=False), (n_rows, width)),
        w=xp.astype(weight, compute, copy=False),
        b=None if bias is None else xp.astype(bias, compute, copy=False),
        y=xp.reshape(_index_targets(xp, targets, device, n_classes, opts.ignore_index), (n_rows,)),
        batch_shape=batch_shape,
        hidden_dtype=hidden.dtype,
        weight_dtype=weight.dtype,
        options=opts,
        memory_budget=None if memory_budget is None else positive_int("memory_budget", memory_budget),
        chunk_size=None if chunk_size is None else positive_int("chunk_size", chunk_size),
        device=device,
    )


# --------------------------------------------------------------------------- values (no reading)


def bad_rows(xp, y, valid, row_max, n_classes: int, opts: Options):
    """Mask of the counted rows the core must poison, computed without reading any value.

    A counted target outside ``[0, n_classes)``, a counted row whose maximum is
    not finite (all ``-inf``, or holding ``+inf``/NaN), and every row if a
    traced γ or threshold is outside [0, 1] or a traced ε outside [0, 1).
    """
    bad = valid & ((y < 0) | (y >= n_classes) | ~xp.isfinite(row_max))
    for v in (opts.gamma, opts.threshold):
        if not isinstance(v, numbers.Real):  # a 0-d (traced) array
            bad = bad | ~((v >= 0) & (v <= 1))
    if not isinstance(opts.label_smoothing, numbers.Real):
        bad = bad | ~((opts.label_smoothing >= 0) & (opts.label_smoothing < 1))
    return bad


def read_any(xp, mask):
    """``bool(any(mask))``, or ``None`` for a traced array (the standard's ``TypeError``)."""
    try:
        return bool(xp.any(mask))
    except TypeError:
        return None


def raise_bad_rows(xp, y, valid, row_max, n_classes: int) -> None:
    """Raise ``ValueError`` naming the first counted row with an invalid target or no finite maximum."""
    out_of_range = valid & ((y < 0) | (y >= n_classes))
    if bool(xp.any(out_of_range)):
        _raise_out_of_range(xp, out_of_range, y, n_classes)
    no_max = valid & ~xp.isfinite(row_max)
    if bool(xp.any(no_max)):
        idx, val = _first(xp, no_max, row_max)
        raise ValueError(f"logits: the row at index {idx} has maximum {val} "
                         "(a counted row needs a finite maximum: not all -inf, no +inf or NaN)")


def _raise_out_of_range(xp, mask, y, n_classes: int):
    idx, val = _first(xp, mask, y)
    raise ValueError(f"targets: value {val} at index {idx} is out of range [0, {n_classes}) "
                     "for the number of classes")


def _first(xp, mask, values):
    """Index (as a tuple) and value of the first True entry of ``mask``."""
    flat = xp.reshape(mask, (-1,))
    pos = int(xp.argmax(xp.astype(flat, xp.int32)))
    value = xp.reshape(values, (-1,))[pos]
    idx, rest = [], pos
    for size in reversed(mask.shape):
        idx.append(rest % size)
        rest //= size
    return tuple(reversed(idx)), (int(value) if xp.isdtype(value.dtype, "integral") else float(value))
