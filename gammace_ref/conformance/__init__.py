"""The conformance suite: golden vectors, every pair of backends, finite differences, peers and relations, the oracle.

Shipped in the package so that ``gammace-ref conformance`` runs it from an
installed wheel (``pip install "gammace_ref[test]"``), from any directory:
the test modules (``test_*.py``), their ``conftest.py`` (the ``backend`` and
``dtype`` fixtures of :mod:`gammace_ref.testing.pytest_plugin`), the pytest
settings the runner uses (``conformance.ini``) and the golden vectors
(``vectors/*.json``, read by :func:`gammace_ref.testing.vectors.load`).
:mod:`gammace_ref.testing.conformance_runner` finds them with
:mod:`importlib.resources`.  In a checkout, ``python -m pytest`` collects the
same files.
"""
