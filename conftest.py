"""Shared by ``tests/`` (unit tests) and ``conformance/`` (the oracle suite).

The ``backend`` fixture runs a test once per backend of
:mod:`gammace_ref.testing.backends`; a backend whose library is absent here
(or CuPy / torch.cuda without a GPU), or not selected by ``GAMMACE_BACKENDS``,
is skipped with that reason.  ``dtype`` is float32 and float64 (or
``GAMMACE_DTYPES``).
"""

import importlib.util

import pytest

from gammace_ref.testing.backends import Backend, BackendUnderTest, selected_dtypes, skip_reason

# Doctest collection imports every module of the package: skip the adapters
# whose framework is not installed here.
collect_ignore = [p for m, p in (("torch", "gammace_ref/torch"), ("jax", "gammace_ref/jax"))
                  if importlib.util.find_spec(m) is None]


@pytest.fixture(params=list(Backend), ids=lambda b: b.value)
def backend(request) -> BackendUnderTest:
    reason = skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    return BackendUnderTest(request.param)


@pytest.fixture(params=["float32", "float64"])
def dtype(request) -> str:
    if request.param not in selected_dtypes():
        pytest.skip(f"{request.param} is not selected (GAMMACE_DTYPES)")
    return request.param
