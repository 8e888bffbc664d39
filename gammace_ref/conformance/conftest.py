"""The suite's fixtures and markers, so that it runs wherever it is: in a checkout, from a wheel, or copied."""

from gammace_ref.testing.pytest_plugin import backend, dtype, pytest_configure  # noqa: F401  (found by name)
