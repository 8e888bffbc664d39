"""Backends under test, as one ``backend`` fixture.

Every test that takes ``backend`` runs once per entry of :class:`Backend`;
an entry whose library is not installed (or, for CuPy, that has no GPU) is
skipped with that reason.  ``backend.asarray`` makes an array of the backend
from a NumPy one, ``backend.numpy`` brings one back, and ``backend.call``
runs a function on the backend's arrays -- under ``jax.jit`` for JAX_JIT, with
the non-array arguments closed over as static values.
"""

from __future__ import annotations

import enum
import functools
import importlib

import numpy as np
import pytest


class Backend(enum.Enum):
    NUMPY = "numpy"
    ARRAY_API_STRICT = "array_api_strict"
    TORCH = "torch"
    JAX = "jax"
    JAX_JIT = "jax.jit"
    CUPY = "cupy"

    @property
    def module(self):
        return {"jax": "jax.numpy", "jax.jit": "jax.numpy"}.get(self.value, self.value)


class BackendUnderTest:
    def __init__(self, kind: Backend):
        import array_api_compat

        self.kind = kind
        self.module = importlib.import_module(kind.module)
        self.lazy = kind is Backend.JAX_JIT
        self.xp = array_api_compat.array_namespace(self.asarray(np.zeros(1)))  # array-API namespace

    def __repr__(self):
        return self.kind.value

    def asarray(self, a):
        a = np.asarray(a)
        if self.kind is Backend.TORCH:
            import torch

            return torch.from_numpy(a.copy())
        return self.module.asarray(a)

    def numpy(self, a):
        if self.kind is Backend.TORCH:
            import torch

            a = a.detach().cpu()
            return (a.float() if a.dtype == torch.bfloat16 else a).numpy()
        if self.kind is Backend.CUPY:
            return a.get()
        if self.kind is Backend.ARRAY_API_STRICT:
            return np.asarray(a._array)
        return np.asarray(a)

    def call(self, fn, *arrays, **kwargs):
        if self.lazy:
            import jax

            return jax.jit(lambda *a: fn(*a, **kwargs))(*arrays)
        return fn(*arrays, **kwargs)


@functools.cache
def _availability(kind: Backend):
    try:
        importlib.import_module(kind.module)
    except ImportError as exc:
        return f"{kind.value} is not installed ({exc})"
    if kind is Backend.CUPY:
        import cupy

        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "cupy is installed but no CUDA device is present"
        except Exception as exc:  # no driver / no runtime
            return f"cupy is installed but CUDA is unusable ({exc})"
    if kind in (Backend.JAX, Backend.JAX_JIT):
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 tests need it; float32 still works
    return None


@pytest.fixture(params=list(Backend), ids=lambda b: b.value)
def backend(request) -> BackendUnderTest:
    reason = _availability(request.param)
    if reason:
        pytest.skip(reason)
    return BackendUnderTest(request.param)


@pytest.fixture(params=["float32", "float64"])
def dtype(request) -> str:
    return request.param
