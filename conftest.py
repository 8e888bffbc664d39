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
whole module), or add a pattern of its node id to :data:`SLOW` below.  Every
test run on a backend of :data:`SLOW_BACKENDS` (Dask, ``jax.jit``) is slow too:
the default run covers NumPy, array-api-strict, torch and eager JAX, the slow
run the rest.
``python -m pytest --durations=20`` shows the slowest tests of a run.

Tests marked ``exact`` (and every doctest and documentation snippet, marked
here) assert exact floats or ulp bounds: ``.ci/run`` runs them a second time
with NumPy's SIMD dispatch turned off (``NPY_DISABLE_CPU_FEATURES``), so that
no claim depends on the CPU's vector extensions.
"""

import importlib.util
import re

import pytest

pytest_plugins = ["gammace_ref.testing.pytest_plugin"]

# Doctest collection imports every module of the package: skip the adapters
# whose framework is not installed here.
collect_ignore = [p for m, p in (("torch", "gammace_ref/torch"), ("jax", "gammace_ref/jax"),
                                  ("transformers", "gammace_ref/integrations/hf.py"))
                  if importlib.util.find_spec(m) is None]

# Slow, besides the tests marked @pytest.mark.slow in their files: every test run on one of these
# backends (the `backend` fixture or a `pair` of backends: their first calls build graphs or compile,
# seconds each), and the node ids matching one of these patterns (a file, a test, a parametrisation;
# `*` matches anything, every other character itself).
SLOW_BACKENDS = ("dask", "jax.jit")
SLOW = (
    "tests/test_torch_distributed.py::*",           # spawns 2 and 4 processes
    "tests/test_torch_distributed_linear.py::test_vocab_parallel_linear_equals_single_process",  # 2 processes
    "tests/test_torch_linear.py::test_torch_compile_fullgraph[blocks]",  # compiles the block loop
    "tests/test_linear_vocab.py::test_random_layers_equal_the_unsplit_path[jax-*",  # eager JAX, op by op
    "tests/test_dask_cluster.py::*",                # starts a dask.distributed LocalCluster
    "tests/test_sharded_jax.py::*",                 # a JAX subprocess with 4 host devices
    "tests/test_accuracy.py::test_regime_battery[*-huge_vocab]",  # C = 100000 against mpmath
    "tests/test_linear.py::test_jax_adapter_check_grads_and_tailr",
    "tests/test_linear.py::test_peak_memory_follows_the_budget",
    "tests/test_torch_adapter.py::test_gradcheck_compiled",
    "gammace_ref/conformance/test_oracle_torch.py::test_torch_and_jax_adapters_pass_as_candidates",
    "gammace_ref/conformance/test_oracle_second_order.py::TestJax::test_the_adapters_pass_in_every_regime",
    "gammace_ref/conformance/test_relations.py::test_gamma_zero_is_torch_cross_entropy[jax]",
    # Second order and dL/dγ: the default run keeps the core's HVPs and dL/dγ in every regime but
    # C = 100000 (mpmath, ~30 s each), torch's, and JAX's through the oracle and the MAML/optax tests;
    # the exhaustive JAX transformation matrix compiles per regime and transformation (minutes).
    "tests/test_second_order.py::*[huge_vocab-*",
    "tests/test_second_order.py::test_jax_hessian_rows_every_way[*",
    "tests/test_second_order.py::test_jvp_tangents[*",
    "tests/test_second_order.py::test_jax_hvp[*",
    "tests/test_second_order.py::test_every_jax_transformation_agrees",
    "tests/test_second_order.py::test_reverse_over_forward_limits_are_as_documented*",
    "tests/test_dgamma.py::test_core_dgamma_in_every_regime[huge_vocab-*",
    "tests/test_dgamma.py::test_jax_gamma_derivatives[*",
    "tests/test_transformations.py::test_jax_linear_derivatives_equal_the_logits_path[*",
    "tests/test_docs_transformations.py::test_block_runs_in_a_fresh_interpreter*",
)

# Exact-float claims, besides the tests marked @pytest.mark.exact and every doctest (patterns as in
# SLOW): what NumPy's SIMD kernels compute, on the numpy backend.
EXACT = (
    "tests/test_docs_examples.py::*",
    "tests/test_accuracy.py::*[numpy-*",
    "tests/test_accuracy.py::test_random_rows_float64_numpy",
    "tests/test_api.py::*[numpy*",
    "gammace_ref/conformance/test_vectors.py::test_backend_reproduces_vectors[numpy-*",
)


def _pattern(patterns):
    return re.compile("|".join(re.escape(p).replace(r"\*", ".*") for p in patterns))


_SLOW, _EXACT = _pattern(SLOW), _pattern(EXACT)


def _backends(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    kinds = [params["backend"]] if "backend" in params else list(params.get("pair", ()))
    return [getattr(k, "value", k) for k in kinds]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _SLOW.fullmatch(item.nodeid) or any(b in SLOW_BACKENDS for b in _backends(item)):
            item.add_marker(pytest.mark.slow)
        if _EXACT.fullmatch(item.nodeid) or type(item).__name__ == "DoctestItem":
            item.add_marker(pytest.mark.exact)
