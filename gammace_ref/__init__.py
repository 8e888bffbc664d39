"""gammace_ref: the reference implementation of the γ-cross-entropy (TaiLr) loss.

One implementation written against the Python array API standard: the same
code runs on NumPy, CuPy, PyTorch, JAX (also under ``jax.jit``) and
array-api-strict, with an exact value and gradient in every numerical regime.

Importing this package imports no array library beyond array-api-compat.
"""

from . import linear  # gammace_ref.linear: from hidden states, chunk by chunk
from ._api import (
    gamma_ce,
    gamma_ce_dgamma,
    gamma_ce_dlogp,
    gamma_ce_from_logp,
    gamma_ce_grad,
    gamma_ce_hvp,
    gamma_ce_value_and_grad,
    tailr,
    tailr_grad,
    tailr_hvp,
    tailr_value_and_grad,
    tailr_weight,
)
from ._schedule import gamma_schedule

__version__ = "0.1.0"

__all__ = [
    "gamma_ce",
    "gamma_ce_dgamma",
    "gamma_ce_dlogp",
    "gamma_ce_from_logp",
    "gamma_ce_grad",
    "gamma_ce_hvp",
    "gamma_ce_value_and_grad",
    "gamma_schedule",
    "linear",
    "tailr",
    "tailr_grad",
    "tailr_hvp",
    "tailr_value_and_grad",
    "tailr_weight",
]
