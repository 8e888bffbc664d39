"""The checkout's pytest configuration: the suites' fixtures, the doctests' scope, which tests are slow.

The ``backend`` and ``dtype`` fixtures come from
:mod:`gammace_ref.testing.pytest_plugin` (the conformance suite in
``gammace_ref/conformance/`` imports the same ones, so that it also runs from
an installed wheel).

Slow tests
----------
``python -m pytest`` (the README's test command) runs the default set, which
deselects the tests marked ``slow`` (``addopts = -m "not slow"`` in
pyproject.toml); ``python -m pytest -m slow`` runs the rest, and ``.ci/run``
runs both.  A test that takes more than a few seconds on 2 cores is slow:
mark it with ``@pytest.mark.slow`` (or ``pytestmark = pytest.mark.slow`` for a
whole module), or add its file or node-id prefix to :data:`SLOW` below.
``python -m pytest --durations=20`` shows the slowest tests of a run.

Tests marked ``exact`` (and every doctest and documentation snippet, marked
here) assert exact floats or ulp bounds: ``.ci/run`` runs them a second time
with NumPy's SIMD dispatch turned off (``NPY_DISABLE_CPU_FEATURES``), so that
no claim depends on the CPU's vector extensions.
"""

import importlib.util

import pytest

pytest_plugins = ["gammace_ref.testing.pytest_plugin"]

# Doctest collection imports every module of the package: skip the adapters
# whose framework is not installed here.
collect_ignore = [p for m, p in (("torch", "gammace_ref/torch"), ("jax", "gammace_ref/jax.py"))
                  if importlib.util.find_spec(m) is None]

# Node-id prefixes of the slow tests (a file, a test, or one parametrisation of it), besides those
# marked @pytest.mark.slow in the test files themselves.
SLOW = (
)

# Node-id prefixes of tests asserting exact floats or ulp bounds, besides those marked
# @pytest.mark.exact (doctests are added below).
EXACT = (
    "tests/test_docs_examples.py",
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
        if item.nodeid.startswith(EXACT) or type(item).__name__ == "DoctestItem":
            item.add_marker(pytest.mark.exact)
