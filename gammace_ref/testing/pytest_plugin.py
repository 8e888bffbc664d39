"""The pytest fixtures of gammace_ref's suites: ``backend`` and ``dtype``.

Shared by the checkout's unit tests (``tests/``, through the root
``conftest.py``: ``pytest_plugins = ["gammace_ref.testing.pytest_plugin"]``)
and the conformance suite shipped in the package
(``gammace_ref/conformance/``, whose own ``conftest.py`` imports the two
fixtures, so the suite runs from an installed wheel, or from a copy of that
directory, without the checkout).  It is not registered as an entry point:
installing gammace_ref adds no fixture to anyone else's test suite.

The ``backend`` fixture runs a test once per backend of
:mod:`gammace_ref.testing.backends`; a backend whose library is absent here
(or CuPy / torch.cuda without a GPU), or not selected by ``GAMMACE_BACKENDS``,
is skipped with that reason; a test reaches it through
``backend.run(fn, *numpy_arrays, **kwargs)`` (NumPy in and out),
``backend.call`` or ``backend.compile`` (see
:class:`~gammace_ref.testing.backends.BackendUnderTest`).  ``dtype`` is
float32 and float64 (or ``GAMMACE_DTYPES``).
"""

from __future__ import annotations

import pytest

from .backends import Backend, BackendUnderTest, selected_dtypes, skip_reason

MARKERS = (
    "slow: takes more than a few seconds on 2 cores; deselected by the default run "
    "(`python -m pytest`), run by `python -m pytest -m slow`",
    "exact: asserts exact floats or an ulp bound; CI runs these again on NumPy's baseline SIMD path",
)


def pytest_configure(config):
    for line in MARKERS:
        config.addinivalue_line("markers", line)


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
