"""Tools for checking γ-CE / TaiLr implementations against ground truth.

``reference`` computes the loss and gradient with mpmath at 60 digits (needs
the ``oracle`` extra); ``metrics`` is the error metric (relative error,
ULPs); ``regimes`` is the battery of hard numerical cases; ``oracle`` judges
another implementation (:func:`check_implementation`), ``oracle_linear`` a
fused linear + loss kernel (:func:`check_linear_implementation`), by the
rules of ``judge`` on the formats of ``formats``; ``backends`` is the table
of array libraries the suites run on.
"""

from .oracle import Report, assert_matches_reference, check_implementation
from .oracle_linear import check_linear_implementation

__all__ = ["Report", "assert_matches_reference", "check_implementation", "check_linear_implementation"]
