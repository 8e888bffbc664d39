"""The array libraries gammace_ref is checked on, and how to reach each.

Used by the test suite (one ``backend`` fixture) and by ``gammace-ref
accuracy``.  Each :class:`Backend` knows its module, whether it is usable
here (:func:`availability` says why not), how to make an array from a NumPy
one and back, and how to call a function on its arrays -- under
``jax.jit`` for ``JAX_JIT``, with the non-array arguments closed over.
``TORCH_CUDA`` and ``CUPY`` need a CUDA device; ``DASK`` arrays are chunked
along the leading (batch) axis.  ``GAMMACE_BACKENDS`` / ``GAMMACE_DTYPES``
(comma-separated) narrow what the suites run (:func:`skip_reason`).
"""

from __future__ import annotations

import enum
import functools
import importlib
import os

import numpy as np


class Backend(enum.Enum):
    NUMPY = "numpy"
    ARRAY_API_STRICT = "array_api_strict"
    TORCH = "torch"
    TORCH_CUDA = "torch.cuda"
    JAX = "jax"
    JAX_JIT = "jax.jit"
    CUPY = "cupy"
    DASK = "dask"

    @property
    def module_name(self) -> str:
        return {"jax": "jax.numpy", "torch": "torch", "dask": "dask.array"}.get(self.value.split(".")[0], self.value)


def skip_reason(kind: Backend) -> str | None:
    """Why a suite skips ``kind``: not selected (``GAMMACE_BACKENDS``) or not available here."""
    chosen = os.environ.get("GAMMACE_BACKENDS")
    if chosen and kind.value not in chosen.split(","):
        return f"{kind.value} is not selected (GAMMACE_BACKENDS={chosen})"
    return availability(kind)


def selected_dtypes(default=("float32", "float64")) -> tuple:
    """The float dtypes a suite runs (``GAMMACE_DTYPES``, comma-separated; default both)."""
    chosen = os.environ.get("GAMMACE_DTYPES")
    return tuple(chosen.split(",")) if chosen else tuple(default)


@functools.cache
def availability(kind: Backend) -> str | None:
    """``None`` if ``kind`` can run here, else the reason it cannot."""
    try:
        importlib.import_module(kind.module_name)
    except ImportError as exc:
        return f"{kind.value} is not installed ({exc})"
    if kind is Backend.TORCH_CUDA:
        import torch

        if not torch.cuda.is_available():
            return "torch is installed but no CUDA device is present"
    if kind is Backend.CUPY:
        import cupy

        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "cupy is installed but no CUDA device is present"
        except Exception as exc:  # no driver or no runtime: CuPy raises its own types
            return f"cupy is installed but CUDA is unusable ({type(exc).__name__}: {exc})"
    if kind in (Backend.JAX, Backend.JAX_JIT):
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 checks need it; float32 still works
    return None


class BackendUnderTest:
    """One usable backend: ``asarray`` / ``numpy`` converters and ``call``."""

    def __init__(self, kind: Backend):
        import array_api_compat

        reason = availability(kind)
        if reason:
            raise RuntimeError(reason)
        self.kind = kind
        self.module = importlib.import_module(kind.module_name)
        self.lazy = kind is Backend.JAX_JIT
        self.xp = array_api_compat.array_namespace(self.asarray(np.zeros(1)))

    def __repr__(self):
        return self.kind.value

    def asarray(self, a):
        a = np.asarray(a)
        if self.kind in (Backend.TORCH, Backend.TORCH_CUDA):
            t = self.module.from_numpy(a.copy())
            return t.cuda() if self.kind is Backend.TORCH_CUDA else t
        if self.kind is Backend.DASK:  # chunked along the batch (leading) axis: two chunks
            return self.module.from_array(a, chunks=tuple(max(1, -(-n // 2)) if i == 0 else -1
                                                          for i, n in enumerate(a.shape)))
        return self.module.asarray(a)

    def numpy(self, a):
        if self.kind in (Backend.TORCH, Backend.TORCH_CUDA):
            a = a.detach().cpu()
            return (a.float() if a.dtype == self.module.bfloat16 else a).numpy()
        if self.kind is Backend.CUPY:
            return a.get()
        if self.kind is Backend.DASK:
            return np.asarray(a.compute(scheduler="synchronous"))
        if self.kind is Backend.ARRAY_API_STRICT:
            return np.from_dlpack(a)
        return np.asarray(a)

    def compile(self, fn):
        """``fn`` as this backend runs it: ``jax.jit(fn)`` for ``JAX_JIT`` (every argument traced)."""
        if self.lazy:
            import jax

            return jax.jit(fn)
        return lambda *args: self.call(fn, *args)

    def call(self, fn, *arrays, **kwargs):
        if self.lazy:
            import jax

            return jax.jit(lambda *a: fn(*a, **kwargs))(*arrays)
        if self.kind is Backend.DASK:  # tiny test graphs: the threaded scheduler only adds overhead
            import dask

            with dask.config.set(scheduler="synchronous"):
                return fn(*arrays, **kwargs)
        return fn(*arrays, **kwargs)
