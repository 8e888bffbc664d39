"""How the oracle calls a candidate: arrays of the chosen backend and format, autodiff, a watchdog.

:class:`Runner` turns NumPy inputs into arrays of the backend in the format
under test (bfloat16 and float16 included: see
:mod:`gammace_ref.testing.formats`), calls the candidate with the options as
keyword arguments, takes the gradient of the sum of its outputs (torch:
``torch.autograd.grad``; JAX: ``jax.vjp``; elsewhere the ``grad`` function
given, or none) and returns NumPy float64 results with the format each came
back in.

With ``order=2`` a call along a direction ``v`` also returns the
Hessian-vector product of the sum of the outputs with respect to the first
array (the logits): the derivative of the gradient along ``v`` -- torch:
``torch.autograd.grad(..., create_graph=True)`` then the gradient's own
backward along ``v`` (the Hessian is symmetric); JAX: ``jax.jvp`` of the
gradient (forward over reverse); elsewhere, or when given,
``hvp(*arrays, targets, gamma[, threshold], v, **options)``.

Under ``jax.jit`` the candidate and its ``jax.vjp`` are compiled once per
shape and format, with γ (and TaiLr's threshold) traced; a candidate that
cannot take a traced γ (``if gamma == 1:``, ``float(gamma)``) is retried with
γ as a static argument -- one compilation per γ -- and the report says
"traced γ unsupported".

With ``timeout`` (seconds per call) the candidate runs in a daemon worker
thread and a call that does not return in time raises
:class:`CandidateTimeout`.  Python cannot kill a thread: the hung call keeps
running in the background (it cannot keep the process alive: the thread is a
daemon), and every later call of that runner is refused at once.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass, field

import numpy as np

from . import formats
from .backends import Backend, BackendUnderTest, availability

__all__ = ["CandidateError", "CandidateTimeout", "Result", "Runner", "jax_x64"]


class CandidateError(Exception):
    """The candidate raised, or returned something that is not an array (the message says which)."""


class CandidateTimeout(Exception):
    """A call of the candidate did not return within the timeout."""


@dataclass
class Result:
    """One call: the value and each gradient (``{name: array}``), as float64 NumPy arrays, with their formats."""

    value: np.ndarray
    value_format: str
    grads: dict = field(default_factory=dict)  # name -> float64 array
    grad_formats: dict = field(default_factory=dict)  # name -> format name
    hvp: np.ndarray | None = None  # the Hessian-vector product (order 2), float64
    hvp_format: str | None = None


# Formats a backend's arrays can hold (NumPy has no bfloat16, array-api-strict no float16).
_CARRIES = {
    "numpy": ("float64", "float32", "float16"),
    "array_api_strict": ("float64", "float32"),
    "dask": ("float64", "float32", "float16"),
    "cupy": ("float64", "float32", "float16"),
    "torch": ("float64", "float32", "bfloat16", "float16"),
    "jax": ("float64", "float32", "bfloat16", "float16"),
}


@contextlib.contextmanager
def jax_x64(enabled: bool):
    """Enable JAX's float64 for the block (when ``enabled``) and restore the process's setting after it."""
    if not enabled:
        yield
        return
    import jax

    before = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def _is_tracer_error(exc) -> bool:
    try:
        import jax
    except ImportError:  # pragma: no cover - only reached on the JAX backends
        return False
    e = jax.errors
    return isinstance(exc, (e.ConcretizationTypeError, e.TracerArrayConversionError,
                            e.TracerIntegerConversionError))


class _Worker:
    """A daemon thread that runs one call at a time, with a timeout per call."""

    def __init__(self):
        self.jobs = queue.Queue()
        self.hung = None
        threading.Thread(target=self._loop, name="gammace-oracle-candidate", daemon=True).start()

    def _loop(self):
        while True:
            fn, box, done = self.jobs.get()
            try:
                box.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 -- handed back to the caller as it is
                box.append((False, exc))
            done.set()

    def call(self, fn, timeout: float, what: str):
        if self.hung:
            raise CandidateTimeout(f"not run: {self.hung}")
        box, done = [], threading.Event()
        self.jobs.put((fn, box, done))
        if not done.wait(timeout):
            self.hung = f"an earlier call ({what}) did not return within {timeout:g} s"
            raise CandidateTimeout(f"{what} did not return within {timeout:g} s (the call is abandoned: "
                                   "a Python thread cannot be killed, it goes on in the background)")
        ok, out = box[0]
        if ok:
            return out
        raise out


class Runner:
    """Calls ``candidate`` on ``backend`` as the oracle does.

    ``positional``: the names of the array arguments before the targets
    (``("logits",)`` or ``("hidden", "weight")``); ``keyword_arrays``: array
    arguments passed by keyword (``("bias",)``); ``scalars``: ``("gamma",)`` or
    ``("gamma", "threshold")``, after the targets; ``options``: keyword
    arguments passed on every call (``reduction=...``).  ``grad`` returns the
    gradients with respect to ``positional + keyword_arrays`` (one array for
    one of them, else a tuple); ``hvp`` the Hessian-vector product with
    respect to the first of them along the array after the scalars.
    """

    def __init__(self, backend, candidate, *, grad=None, hvp=None, positional=("logits",), keyword_arrays=(),
                 scalars=("gamma",), options=None, timeout=None, static_gamma=None):
        self.kind = Backend(backend)
        reason = availability(self.kind)
        if reason:
            raise RuntimeError(f"backend {self.kind.value!r} cannot run here: {reason}")
        self.b = BackendUnderTest(self.kind)
        self.family = self.b.family
        self.candidate, self.grad, self.hvp = candidate, grad, hvp
        self.positional, self.keyword_arrays = tuple(positional), tuple(keyword_arrays)
        self.scalars, self.options = tuple(scalars), dict(options or {})
        self.names = self.positional + self.keyword_arrays
        self.grad_checked = grad is not None or self.family in ("torch", "jax")
        self.static_gamma = static_gamma
        self.notes = []
        self.traces = 0  # how many times the JAX function was traced (compilations under jax.jit)
        self._worker = _Worker() if timeout is not None else None
        self.timeout = timeout
        self._jitted = {}

    # ------------------------------------------------------------------ formats

    def cannot_carry(self, fmt: str) -> str | None:
        """Why this backend cannot hold arrays of ``fmt`` (``None`` if it can)."""
        if fmt in _CARRIES.get(self.family, ()):
            return None
        if self.family == "numpy" and fmt == "bfloat16":
            return "NumPy has no bfloat16 (use backend 'torch' or 'jax')"
        return f"{self.kind.value} arrays cannot be {fmt}"

    def _asarray(self, a, fmt):
        if self.family == "torch":
            import torch

            t = self.b.asarray(a).to(getattr(torch, fmt))
            return t
        if self.family == "jax":
            import jax.numpy as jnp

            return jnp.asarray(a, dtype=getattr(jnp, fmt))
        return self.b.asarray(np.asarray(a).astype(formats.FORMATS[fmt].storage))

    def _numpy(self, a, what):
        if a is None:
            return None, None
        dtype = getattr(a, "dtype", None)
        if dtype is None or not hasattr(a, "shape"):
            raise CandidateError(f"the {what} is a {type(a).__name__}, not an array")
        fmt = formats.name_of(dtype)
        out = self.b.numpy(a)
        out = np.asarray(out.astype(np.float64) if fmt in formats.FORMATS else out)
        return out, fmt

    # ------------------------------------------------------------------ calls

    def run(self, inputs: dict, fmt: str, targets, gamma, threshold=None, direction=None) -> Result:
        """One value-and-gradient evaluation on NumPy ``inputs`` (``{name: array}``) in format ``fmt``.

        ``direction`` (a NumPy array of the first input's shape): also the
        Hessian-vector product along it (:attr:`Result.hvp`).
        """
        call = (lambda: self._run(inputs, fmt, targets, gamma, threshold, direction))
        if self._worker is None:
            return call()
        return self._worker.call(call, self.timeout, f"the call at gamma={gamma!r}")

    def _args(self, arrays, y, g, t, extra=()):
        pos = [arrays[n] for n in self.positional]
        kw = {n: arrays[n] for n in self.keyword_arrays}
        sc = (g, t)[:len(self.scalars)]
        return (*pos, y, *sc, *extra), {**kw, **self.options}

    def _call(self, fn, arrays, y, g, t, what, extra=()):
        args, kwargs = self._args(arrays, y, g, t, extra)
        try:
            return fn(*args, **kwargs)
        except (CandidateError, CandidateTimeout):
            raise
        except Exception as exc:
            if self.family == "jax" and _is_tracer_error(exc):
                raise
            raise CandidateError(f"{what} raised {type(exc).__name__}: {_first_line(exc)}") from exc

    def _grads_out(self, grads):
        if grads is None:
            return {}, {}
        if not isinstance(grads, (tuple, list)):
            grads = (grads,)
        if len(grads) != len(self.names):
            raise CandidateError(f"the gradient function returned {len(grads)} arrays, expected {len(self.names)} "
                                 f"({', '.join(self.names)})")
        out, fmts = {}, {}
        for n, g in zip(self.names, grads):
            out[n], fmts[n] = self._numpy(g, f"gradient with respect to {n}")
        return out, fmts

    def _run(self, inputs, fmt, targets, gamma, threshold, direction=None):
        if self.family == "torch":
            return self._run_torch(inputs, fmt, targets, gamma, threshold, direction)
        if self.family == "jax":
            return self._run_jax(inputs, fmt, targets, gamma, threshold, direction)
        arrays = {n: self._asarray(a, fmt) for n, a in inputs.items()}
        y = self.b.asarray(np.asarray(targets, dtype=np.int64))
        value = self._call(self.candidate, arrays, y, gamma, threshold, "the candidate")
        v, vf = self._numpy(value, "loss")
        grads, gfmts = {}, {}
        if self.grad is not None:
            grads, gfmts = self._grads_out(self._call(self.grad, arrays, y, gamma, threshold, "the gradient function"))
        res = Result(v, vf, grads, gfmts)
        if direction is not None:
            if self.hvp is None:
                raise CandidateError(f"no Hessian-vector product on {self.kind.value}: pass hvp=")
            hv = self._call(self.hvp, arrays, y, gamma, threshold, "the Hessian-vector product function",
                            extra=(self._asarray(direction, fmt),))
            res.hvp, res.hvp_format = self._numpy(hv, "Hessian-vector product")
        return res

    def _run_torch(self, inputs, fmt, targets, gamma, threshold, direction=None):
        import torch

        second = direction is not None and self.hvp is None  # the HVP by differentiating the gradient
        autodiff = self.grad is None
        arrays = {n: self._asarray(a, fmt).requires_grad_(autodiff or second) for n, a in inputs.items()}
        y = self.b.asarray(np.asarray(targets, dtype=np.int64))
        value = self._call(self.candidate, arrays, y, gamma, threshold, "the candidate")
        if not torch.is_tensor(value):
            raise CandidateError(f"the candidate returned a {type(value).__name__}, not a torch tensor")
        if autodiff:
            if not value.requires_grad:
                raise CandidateError("the loss does not require grad (no autograd history): return a "
                                     "differentiable tensor, or pass grad=")
            try:
                grads = torch.autograd.grad(value, [arrays[n] for n in self.names], create_graph=second,
                                            grad_outputs=torch.ones_like(value), allow_unused=True)
            except Exception as exc:
                raise CandidateError(f"the backward pass raised {type(exc).__name__}: {_first_line(exc)}") from exc
            grads = tuple(torch.zeros_like(arrays[n]) if g is None else g for n, g in zip(self.names, grads))
        else:
            grads = self._call(self.grad, {n: a if second else a.detach() for n, a in arrays.items()}, y, gamma,
                               threshold, "the gradient function")
        hv = None
        if second:
            hv = self._torch_hvp(grads, arrays[self.names[0]], self._asarray(direction, fmt))
        elif direction is not None:
            hv = self._call(self.hvp, {n: a.detach() for n, a in arrays.items()}, y, gamma, threshold,
                            "the Hessian-vector product function", extra=(self._asarray(direction, fmt),))
        v, vf = self._numpy(value.detach(), "loss")
        if isinstance(grads, (tuple, list)):
            grads = tuple(g.detach() if torch.is_tensor(g) else g for g in grads)
        elif torch.is_tensor(grads):
            grads = grads.detach()
        g, gf = self._grads_out(grads)
        res = Result(v, vf, g, gf)
        if hv is not None:
            res.hvp, res.hvp_format = self._numpy(hv.detach() if torch.is_tensor(hv) else hv,
                                                  "Hessian-vector product")
        return res

    @staticmethod
    def _torch_hvp(grads, z, v):
        """The derivative of the gradient with respect to ``z`` along ``v`` (the gradient's backward)."""
        import torch

        g = grads[0] if isinstance(grads, (tuple, list)) else grads
        if not torch.is_tensor(g) or not g.requires_grad:
            raise CandidateError("the gradient has no autograd history after create_graph=True: the candidate's "
                                 "backward is not differentiable, so a double backward (MAML, Hessian-vector "
                                 "products) would silently treat its Hessian as 0; make the backward "
                                 "differentiable, raise there, or pass hvp=")
        try:
            (hv,) = torch.autograd.grad(g, z, grad_outputs=v.to(g.dtype), allow_unused=True)
        except Exception as exc:
            raise CandidateError(f"the double backward raised {type(exc).__name__}: {_first_line(exc)}") from exc
        return torch.zeros_like(z) if hv is None else hv

    # ------------------------------------------------------------------ JAX

    def _jax_fn(self, static: bool, second: bool = False):
        """``f(*arrays, y, g, t[, v]) -> (value, grads, hvp)``: jitted under ``jax.jit`` (γ, t static or
        traced); ``second``: with the Hessian-vector product along ``v`` (else ``None``)."""
        key = (static, second)
        if key in self._jitted:
            return self._jitted[key]
        import jax
        import jax.numpy as jnp

        names = self.names

        def both(*xs):
            self.traces += 1
            arrays, (y, g, t) = dict(zip(names, xs[:len(names)])), xs[len(names):len(names) + 3]
            v = xs[len(names) + 3] if second else None

            def first(*diff):
                a = dict(zip(names, diff))
                if self.grad is not None:
                    value = self._call(self.candidate, a, y, g, t, "the candidate")
                    return value, self._call(self.grad, a, y, g, t, "the gradient function")

                def f(*d):
                    return self._call(self.candidate, dict(zip(names, d)), y, g, t, "the candidate")

                value, vjp = jax.vjp(f, *diff)
                return value, vjp(jnp.ones_like(value))

            if v is None:
                return (*first(*(arrays[n] for n in names)), None)
            if self.hvp is not None:
                hv = self._call(self.hvp, arrays, y, g, t, "the Hessian-vector product function", extra=(v,))
                return (*first(*(arrays[n] for n in names)), hv)
            rest = [arrays[n] for n in names[1:]]
            (value, grads), (_, tangents) = jax.jvp(lambda z: first(z, *rest), (arrays[names[0]],), (v,))
            return value, grads, tangents[0] if isinstance(tangents, (tuple, list)) else tangents

        if self.kind is Backend.JAX_JIT:
            n = len(names)
            fn = jax.jit(both, static_argnums=(n + 1, n + 2) if static else ())
        else:
            fn = both
        self._jitted[key] = fn
        return fn

    def _run_jax(self, inputs, fmt, targets, gamma, threshold, direction=None):
        arrays = [self._asarray(inputs[n], fmt) for n in self.names]
        y = self.b.asarray(np.asarray(targets, dtype=np.int64))
        jit = self.kind is Backend.JAX_JIT
        static = bool(self.static_gamma) or not jit or self.notes_traced_unsupported
        second = direction is not None
        extra = (self._asarray(direction, fmt),) if second else ()
        try:
            value, grads, hv = self._jax_fn(static, second)(*arrays, y, gamma, threshold, *extra)
        except Exception as exc:
            if not _is_tracer_error(exc):
                raise
            if jit and not static and self.static_gamma is None:
                self.notes.append(f"traced γ unsupported: under jax.jit the candidate cannot take γ as a traced "
                                  f"value ({type(exc).__name__}: {_first_line(exc)}); γ was passed as a static "
                                  "argument instead (one compilation per γ)")
                return self._run_jax(inputs, fmt, targets, gamma, threshold, direction)
            what = "traced γ unsupported" if jit and not static else "the candidate failed under tracing"
            raise CandidateError(f"{what}: {type(exc).__name__}: {_first_line(exc)}") from exc
        v, vf = self._numpy(value, "loss")
        g, gf = self._grads_out(grads)
        res = Result(v, vf, g, gf)
        if second:
            res.hvp, res.hvp_format = self._numpy(hv, "Hessian-vector product")
        return res

    @property
    def timed_out(self) -> bool:
        """Whether a call did not return in time (every later call is refused)."""
        return self._worker is not None and self._worker.hung is not None

    @property
    def notes_traced_unsupported(self) -> bool:
        return any(n.startswith("traced γ unsupported") for n in self.notes)


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""
