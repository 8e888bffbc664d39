"""The ``backend`` fixture: every test taking it runs once per backend.

A backend whose library is absent here (or CuPy without a GPU) is skipped
with that reason; see :mod:`gammace_ref.testing.backends`.
"""

import pytest

from gammace_ref.testing.backends import Backend, BackendUnderTest, availability


@pytest.fixture(params=list(Backend), ids=lambda b: b.value)
def backend(request) -> BackendUnderTest:
    reason = availability(request.param)
    if reason:
        pytest.skip(reason)
    return BackendUnderTest(request.param)


@pytest.fixture(params=["float32", "float64"])
def dtype(request) -> str:
    return request.param
