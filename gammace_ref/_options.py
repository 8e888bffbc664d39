"""The options of a loss: everything but the arrays, as one frozen value.

Every layer passes an :class:`Options` as one thing: the public functions
build it (through :func:`gammace_ref._validation.options`, which checks each
field), the core reads it, the adapters hand it to ``torch.autograd`` or
``jax.custom_vjp`` whole.  Adding an option means adding a field here, its
check in the validator and its use in the core; nothing positional anywhere.

Some fields may hold an array (:data:`Options.OPERANDS`: a traced γ under
``jax.jit``, a γ tensor of a schedule).  A compiler needs the rest as a
hashable, static value and those arrays as operands: :meth:`Options.split`
separates the two and :meth:`Options.join` puts them back.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Options:
    """The loss and its settings.

    ``gamma`` and ``threshold`` are Python floats in [0, 1] or 0-d arrays
    (traced, unchecked); ``threshold`` is TaiLr's ``b`` (unused by γ-CE);
    ``tailr`` selects the TaiLr surrogate; ``reduction`` is ``"none"``,
    ``"mean"`` or ``"sum"``; ``ignore_index`` an int or ``None``;
    ``label_smoothing`` a float in [0, 1) (or a 0-d array, like γ); ``where`` ``None`` or a boolean
    array of the targets' shape: only its True entries count (optax's
    ``where``), as if the others were ``ignore_index``.
    """

    gamma: Any = 0.0
    threshold: Any = 0.0
    tailr: bool = False
    reduction: str = "mean"
    ignore_index: int | None = None
    label_smoothing: float = 0.0
    where: Any = None

    #: The fields that may hold an array: operands of a compiled function
    #: (``ignore_index``: the torch adapter's kernel traces its value).
    OPERANDS = ("gamma", "threshold", "label_smoothing", "ignore_index", "where")

    def split(self) -> tuple[Options, tuple]:
        """``(static, operands)``: a hashable copy with ``None`` for each array field, and those arrays.

        ``operands`` has one entry per :data:`OPERANDS` field: the array, or
        ``None`` where the field holds a Python number (then in ``static``).
        """
        operands = tuple(v if _is_operand(v) else None for v in (getattr(self, f) for f in self.OPERANDS))
        static = dataclasses.replace(self, **{f: None for f, v in zip(self.OPERANDS, operands) if v is not None})
        return static, operands

    @staticmethod
    def join(static: Options, operands: tuple) -> Options:
        """The inverse of :meth:`split`."""
        return dataclasses.replace(static, **{f: v for f, v in zip(Options.OPERANDS, operands) if v is not None})

    def replace(self, **changes) -> Options:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _is_operand(v) -> bool:
    return not isinstance(v, (int, float)) and v is not None
