"""Every argument check of gammace_ref, in one place.

Each check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right
kind, wrong value) with a message that names the argument and the value.  The
checks that need array *values* (targets in range, a finite row maximum) run
eagerly on eager backends; on traced ones (``jax.jit``), where reading a value
raises ``TypeError`` as the standard specifies, they cannot run, so :func:`row_checks` returns a mask of the offending rows instead and the
core turns those rows into NaN -- never into a plausible number.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import array_api_compat

REDUCTIONS = ("none", "mean", "sum")


@dataclass(frozen=True)
class Checked:
    """Validated inputs, ready for the core.

    ``z`` holds the logits in the compute dtype with the class axis moved last,
    ``y`` the targets as the namespace's index dtype.  ``gamma`` and
    ``threshold`` are Python floats when concrete, 0-d arrays when traced.
    """

    xp: Any
    z: Any
    y: Any
    axis: int
    out_dtype: Any
    gamma: Any
    threshold: Any
    reduction: str
    ignore_index: int | None
    label_smoothing: float


def _describe(x: Any) -> str:
    mod = type(x).__module__
    return type(x).__qualname__ if mod == "builtins" else f"{mod}.{type(x).__qualname__}"


def _is_array(x: Any) -> bool:
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, numbers.Number)


def unit_interval(name: str, value: Any) -> Any:
    """``value`` as a Python float in [0, 1], or a traced 0-d array left as is."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
    elif _is_array(value):
        if getattr(value, "ndim", 0) != 0:
            raise ValueError(f"{name} must be a scalar or a 0-d array, got shape {tuple(value.shape)}")
        try:
            v = float(value)
        except TypeError:
            return value  # traced: no value to check; out of range gives NaN in the core
    else:
        raise TypeError(f"{name} must be a real number in [0, 1], got {_describe(value)} {value!r}")
    if not 0.0 <= v <= 1.0:  # also catches NaN
        raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    return v


def smoothing(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"label_smoothing must be a real number in [0, 1), got {_describe(value)} {value!r}")
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {v!r}")
    return v


def _options(gamma, threshold, reduction, ignore_index, label_smoothing) -> dict:
    """The scalar arguments every loss function shares, checked and normalised."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)):
        raise TypeError(f"ignore_index must be an int or None, got {_describe(ignore_index)} {ignore_index!r}")
    return dict(gamma=unit_interval("gamma", gamma), threshold=unit_interval("threshold", threshold),
                reduction=reduction, ignore_index=None if ignore_index is None else int(ignore_index),
                label_smoothing=smoothing(label_smoothing))


def check(logits, targets, gamma, threshold, *, axis, reduction, ignore_index, label_smoothing,
          xp=None) -> Checked:
    """Validate the arguments of every public loss function.

    An adapter that has checked both arrays' type passes its namespace as
    ``xp`` (no namespace inference: nothing for a tracing compiler to trace).
    """
    if xp is None:
        for name, arr in (("logits", logits), ("targets", targets)):
            if not _is_array(arr):
                raise TypeError(f"{name} must be an array of an array-API library, got {_describe(arr)}")
        try:
            xp = array_api_compat.array_namespace(logits, targets)
        except TypeError as exc:
            raise TypeError(
                f"logits ({_describe(logits)}) and targets ({_describe(targets)}) "
                "must come from the same array library"
            ) from exc
        dev_l, dev_t = array_api_compat.device(logits), array_api_compat.device(targets)
    else:
        dev_l, dev_t = logits.device, targets.device
    if dev_l is not None and dev_t is not None and dev_l != dev_t:  # None: traced, placement unknown
        raise ValueError(f"logits (on device {dev_l}) and targets (on device {dev_t}) must be on the same device")

    if not xp.isdtype(logits.dtype, "real floating"):
        raise TypeError(f"logits must have a real floating dtype, got {logits.dtype}")
    if not xp.isdtype(targets.dtype, "integral"):
        raise TypeError(f"targets must have an integer dtype (class indices), got {targets.dtype}")
    if logits.ndim < 1:
        raise ValueError("logits must have at least one dimension (the class axis), got a 0-d array")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {_describe(axis)} {axis!r}")
    if not -logits.ndim <= axis < logits.ndim:
        raise ValueError(f"axis {axis} is out of range for logits with {logits.ndim} dimension(s)")
    axis = int(axis) % logits.ndim
    n_classes = logits.shape[axis]
    if n_classes == 0:
        raise ValueError(f"logits has no classes: its class axis {axis} has size 0")
    expected = tuple(logits.shape[:axis]) + tuple(logits.shape[axis + 1:])
    if tuple(targets.shape) != expected:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape)} "
            f"without class axis {axis}: expected {expected}"
        )
    options = _options(gamma, threshold, reduction, ignore_index, label_smoothing)

    # float16 / bfloat16 (and any other narrow float) compute in float32, as
    # the official criterion upcasts; the gradient goes back to logits.dtype.
    compute = logits.dtype if logits.dtype in (xp.float32, xp.float64) else xp.float32
    z = xp.astype(logits, compute, copy=False)
    if axis != logits.ndim - 1:
        z = xp.moveaxis(z, axis, -1)
    index = xp.__array_namespace_info__().default_dtypes(device=dev_l)["indexing"]
    y = xp.astype(targets, index, copy=False)
    return Checked(
        xp=xp,
        z=z,
        y=y,
        axis=axis,
        out_dtype=logits.dtype,
        **options,
    )


def row_checks(xp, y, valid, row_max, n_classes: int, scalars=(), read=True):
    """Value checks on targets and rows.

    Readable arrays: raise ``ValueError`` for a counted target outside
    ``[0, n_classes)`` or a counted row whose maximum is not finite (all
    ``-inf``, or holding ``+inf``/NaN), and return ``None``.  Traced arrays
    (or ``read=False``, for a compiler tracing the call):
    return the mask of such rows (plus every row if a traced ``gamma`` or
    ``threshold`` in ``scalars`` is outside [0, 1]), for the core to poison.
    """
    out_of_range = valid & ((y < 0) | (y >= n_classes))
    no_max = valid & ~xp.isfinite(row_max)
    bad = out_of_range | no_max
    any_bad = _read_any(xp, bad) if read else None
    if any_bad is None:  # values unknown: poison the rows instead
        for s in scalars:  # a float from unit_interval, or a 0-d (traced) array
            if not isinstance(s, numbers.Real):
                bad = bad | ~((s >= 0) & (s <= 1))
        return bad
    if any_bad:
        if bool(xp.any(out_of_range)):
            idx, val = _first(xp, out_of_range, y)
            raise ValueError(
                f"targets: value {val} at index {idx} is out of range [0, {n_classes}) "
                "for the number of classes"
            )
        idx, val = _first(xp, no_max, row_max)
        raise ValueError(
            f"logits: the row at index {idx} has maximum {val} "
            "(a counted row needs a finite maximum: not all -inf, no +inf or NaN)"
        )
    return None


def _read_any(xp, mask):
    """``bool(any(mask))``, or ``None`` for a traced array (the standard's ``TypeError``)."""
    try:
        return bool(xp.any(mask))
    except TypeError:
        return None


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


# --------------------------------------------------------------------------- gammace_ref.linear


@dataclass(frozen=True)
class CheckedLinear:
    """Validated inputs of :mod:`gammace_ref.linear`, ready for its chunked driver.

    ``h`` is ``hidden`` flattened to ``(N, H)``, ``w`` the ``(C, H)`` weight and
    ``b`` the ``(C,)`` bias or ``None``, all in the compute dtype (float32 for
    narrower floats); ``y`` the ``(N,)`` targets in the index dtype;
    ``batch_shape`` the leading shape of ``hidden`` (that of ``targets``);
    ``chunk_size`` the resolved number of rows per chunk.
    """

    xp: Any
    h: Any
    w: Any
    b: Any
    y: Any
    batch_shape: tuple
    hidden_dtype: Any
    weight_dtype: Any
    gamma: Any
    threshold: Any
    reduction: str
    ignore_index: int | None
    label_smoothing: float
    chunk_size: int
    device: Any


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {_describe(value)} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_linear(hidden, weight, bias, targets, gamma, threshold, *, reduction, ignore_index, label_smoothing,
                 memory_budget, chunk_size, rows_for_budget) -> CheckedLinear:
    """Validate the arguments of the ``gammace_ref.linear`` functions.

    ``hidden`` ``(..., H)`` and ``weight`` ``(C, H)`` of one real floating
    dtype, ``bias`` ``None`` or ``(C,)`` of that dtype, ``targets`` integer of
    ``hidden``'s leading shape, all of one library and on one device.
    ``rows_for_budget(n_classes, itemsize, memory_budget)`` turns the budget
    into rows per chunk when ``chunk_size`` is ``None``.
    """
    arrays = [("hidden", hidden), ("weight", weight), ("targets", targets)]
    if bias is not None:
        arrays.insert(2, ("bias", bias))
    for name, arr in arrays:
        if not _is_array(arr):
            raise TypeError(f"{name} must be an array of an array-API library, got {_describe(arr)}")
    try:
        xp = array_api_compat.array_namespace(*(a for _, a in arrays))
    except TypeError as exc:
        kinds = ", ".join(f"{n} ({_describe(a)})" for n, a in arrays)
        raise TypeError(f"{kinds} must come from the same array library") from exc
    devices = [(n, array_api_compat.device(a)) for n, a in arrays]
    known = [(n, d) for n, d in devices if d is not None]  # None: traced, placement unknown
    for n, d in known[1:]:
        if d != known[0][1]:
            raise ValueError(f"{known[0][0]} (on device {known[0][1]}) and {n} (on device {d}) "
                             "must be on the same device")
    device = array_api_compat.device(hidden)

    for name, arr in arrays:
        if name != "targets" and not xp.isdtype(arr.dtype, "real floating"):
            raise TypeError(f"{name} must have a real floating dtype, got {arr.dtype}")
    if not xp.isdtype(targets.dtype, "integral"):
        raise TypeError(f"targets must have an integer dtype (class indices), got {targets.dtype}")
    for name, arr in arrays[1:-1]:
        if arr.dtype != hidden.dtype:
            raise TypeError(f"{name} dtype {arr.dtype} differs from hidden dtype {hidden.dtype}: "
                            "give them one dtype")
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
    options = _options(gamma, threshold, reduction, ignore_index, label_smoothing)

    compute = hidden.dtype if hidden.dtype in (xp.float32, xp.float64) else xp.float32
    itemsize = xp.finfo(compute).bits // 8
    budget = None if memory_budget is None else positive_int("memory_budget", memory_budget)
    if chunk_size is not None:  # overrides the budget
        rows = positive_int("chunk_size", chunk_size)
    else:
        rows = rows_for_budget(n_classes, itemsize, budget)
    n_rows = 1
    for s in batch_shape:
        n_rows *= s
    h = xp.reshape(xp.astype(hidden, compute, copy=False), (n_rows, width))
    index = xp.__array_namespace_info__().default_dtypes(device=device)["indexing"]
    return CheckedLinear(
        xp=xp,
        h=h,
        w=xp.astype(weight, compute, copy=False),
        b=None if bias is None else xp.astype(bias, compute, copy=False),
        y=xp.reshape(xp.astype(targets, index, copy=False), (n_rows,)),
        batch_shape=batch_shape,
        hidden_dtype=hidden.dtype,
        weight_dtype=weight.dtype,
        **options,
        chunk_size=min(rows, max(n_rows, 1)),
        device=device,
    )
