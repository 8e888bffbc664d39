"""The array libraries gammace_ref is checked on, and how to reach each.

Used by the test suites (one ``backend`` fixture), the oracle and
``gammace-ref accuracy``.  Each :class:`Backend` knows its library
(``family``) and module, whether it is usable here (:func:`availability`
says why not); a :class:`BackendUnderTest` makes its arrays from NumPy ones
and back, and runs a function as the backend runs it (``compile``, ``call``,
``run``): under ``jax.jit`` for ``JAX_JIT``, with Dask's synchronous
scheduler for ``DASK``, as it is elsewhere.  As in array-api-extra's
``lazy_xp_function``, ``call`` and ``run`` trace only the array arguments
and close over the rest (static under ``jax.jit``); ``compile`` traces every
argument (a γ passed to it is traced, one compilation per shape).
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
    def family(self) -> str:
        """The array library: ``"numpy"``, ``"array_api_strict"``, ``"torch"``, ``"jax"``, ``"cupy"``, ``"dask"``."""
        return self.value.split(".")[0]

    @property
    def module_name(self) -> str:
        return {"jax": "jax.numpy", "dask": "dask.array"}.get(self.family, self.family)


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
    """``None`` if ``kind`` can run here, else the reason it cannot (changes no library's settings)."""
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
    return None


class BackendUnderTest:
    """One usable backend: ``asarray`` / ``numpy`` converters, and ``compile`` / ``call`` / ``run``.

    Making one for ``JAX`` or ``JAX_JIT`` enables float64 in JAX
    (``jax_enable_x64``: the float64 checks need it; float32 still works).
    """

    def __init__(self, kind: Backend):
        import array_api_compat

        reason = availability(kind)
        if reason:
            raise RuntimeError(reason)
        self.kind = kind
        self.family = kind.family
        self.module = importlib.import_module(kind.module_name)
        self.lazy = kind is Backend.JAX_JIT
        if self.family == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)
        self.xp = array_api_compat.array_namespace(self.asarray(np.zeros(1)))

    def __repr__(self):
        return self.kind.value

    def asarray(self, a):
        """An array of this backend from a NumPy array (or anything ``np.asarray`` takes)."""
        a = np.asarray(a)
        if self.family == "torch":
            t = self.module.from_numpy(a.copy())
            return t.cuda() if self.kind is Backend.TORCH_CUDA else t
        if self.kind is Backend.DASK:  # chunked along the batch (leading) axis: two chunks
            return self.module.from_array(a, chunks=tuple(max(1, -(-n // 2)) if i == 0 else -1
                                                          for i, n in enumerate(a.shape)))
        return self.module.asarray(a)

    def numpy(self, a):
        """A NumPy array from an array of this backend; a tuple of them element-wise, ``None`` kept."""
        if isinstance(a, tuple):
            return tuple(self.numpy(x) for x in a)
        if a is None:
            return None
        if self.family == "torch":
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
        """``fn`` as this backend runs it: ``jax.jit(fn)`` for ``JAX_JIT`` (every argument traced).

        ``DASK``: ``fn`` under the synchronous scheduler (tiny test graphs: the
        threaded one only adds overhead); other backends: ``fn`` itself.
        """
        if self.lazy:
            import jax

            return jax.jit(fn)
        if self.kind is Backend.DASK:
            import dask

            def synchronous(*args, **kwargs):
                with dask.config.set(scheduler="synchronous"):
                    return fn(*args, **kwargs)
            return synchronous
        return fn

    def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` through :meth:`compile`, with only the array arguments traced.

        The arguments that are arrays (positional or keyword) are the
        operands; every other one (γ as a Python float, ``reduction=...``) is
        closed over: static under ``jax.jit``.
        """
        import array_api_compat

        pos = [i for i, a in enumerate(args) if array_api_compat.is_array_api_obj(a)]
        kw = [k for k, v in kwargs.items() if array_api_compat.is_array_api_obj(v)]

        def bound(*arrays, **kwarrays):
            full = list(args)
            for i, a in zip(pos, arrays):
                full[i] = a
            return fn(*full, **{**kwargs, **kwarrays})

        return self.compile(bound)(*(args[i] for i in pos), **{k: kwargs[k] for k in kw})

    def run(self, fn, *args, **kwargs):
        """:meth:`call` with NumPy in and out: every NumPy array argument becomes an array of this
        backend, and the result (an array, or a tuple of arrays and ``None``) comes back as NumPy."""
        def conv(a):
            return self.asarray(a) if isinstance(a, np.ndarray) else a

        out = self.call(fn, *map(conv, args), **{k: conv(v) for k, v in kwargs.items()})
        return self.numpy(out)
