"""One text for the arguments the public functions share; each function's numpydoc sections are made from it.

A public function writes its own summary, maths and examples;
:func:`shared` adds its Parameters (and Returns) sections from
:data:`PARAMETERS` and :data:`RETURNS`, in signature order, with each
default read off the signature.  So ``help(gammace_ref.torch.gamma_ce)`` shows every argument,
and a change of wording is made once.
"""

from __future__ import annotations

import inspect
import textwrap

#: name -> (type, description); the default comes from the signature.
PARAMETERS = {
    "logits": ("array, real floating, shape (..., C, ...)",
               "Unnormalised log-probabilities, of any array-API library (NumPy, CuPy, PyTorch, JAX, "
               "array-api-strict, ...). float16/bfloat16 are computed in float32. Never modified."),
    "targets": ("array, integer, shape of logits without the class axis",
                "Class indices in ``[0, C)``, or ``ignore_index``."),
    "logp": ("array, real floating", "Target log-probabilities ``log p(y|x) ≤ 0``, elementwise."),
    "hidden": ("array, real floating, shape (..., H)", "Hidden states: the input of the final linear layer."),
    "weight": ("array, shape (C, H), of hidden's dtype", "The final layer's weight (``lm_head``)."),
    "gamma": ("float or 0-d array in [0, 1]",
              "γ. 0 is cross-entropy; 1 is the continuous limit ``1 - p``. A 0-d array may be traced "
              "(a schedule inside a compiled step); a traced value outside [0, 1] gives NaN."),
    "threshold": ("float or 0-d array in [0, 1]",
                  "TaiLr's ``b``: the weight is ``clip(w, b, 1)``; ``b = 0`` gives the γ-CE gradient."),
    "axis": ("int", "The class axis (``1`` for torch's ``(N, C, d1, ...)`` layout)."),
    "bias": ("array, shape (C,), or None", "The final layer's bias."),
    "reduction": ('{"mean", "sum", "none"}',
                  '``"none"``: one loss per target (shape of ``targets``; ignored targets give 0). '
                  '``"mean"``: the average over the counted (non-ignored) targets; with none counted it '
                  'is 0, with a zero gradient. Gradients are those of the reduced value (for ``"none"``, '
                  "of the sum: each row holds the gradient of its own loss)."),
    "ignore_index": ("int or None",
                     "Targets equal to it count for nothing: no loss, no gradient, not in the mean's "
                     "denominator. ``None``: every target counts, and a negative target is an error."),
    "label_smoothing": ("float in [0, 1)",
                        "ε. Adds the uniform-target cross-entropy, unweighted, as torch's "
                        "``label_smoothing`` and the official TaiLr criterion do: "
                        "``(1-ε)·main + ε/C·Σ_j -log p_j``."),
    "where": ("boolean array of the targets' shape, or None",
              "Only the True entries count, as if the others were ``ignore_index`` (optax's ``where``)."),
    "memory_budget": ("int or None",
                      "Bytes of chunk temporaries allowed (default 256 MiB); sets the rows per chunk."),
    "chunk_size": ("int or None", "Rows per chunk; overrides ``memory_budget``."),
    "compiled": ("bool",
                 "Run the core through ``torch.compile`` (one compilation per dtype, rank and option set; "
                 "after one failure it warns and runs eagerly from then on)."),
}

#: name -> (type, description) of what a function returns.
RETURNS = {
    "loss": ("array",
             "In the compute dtype (float32 for float16/bfloat16 inputs), on the input's device: "
             '0-d for "mean" and "sum", the shape of ``targets`` for "none".'),
    "grad": ("array", "The gradient with respect to ``logits``: in their dtype, device and layout."),
    "value": ("array", "Elementwise, of ``logp``'s shape and dtype."),
    "hvp": ("array", "The Hessian-vector product with respect to ``logits`` (of the reduced value; for "
                     '``"none"``, of the sum): in their dtype, device and layout.'),
    "dgamma": ("array", "dL/dγ, reduced as the loss (0-d for \"mean\" and \"sum\", per target for \"none\"), "
                        "in the compute dtype."),
    "linear": ("LinearGrads",
               "``(loss, hidden, weight, bias)``: the reduced loss (compute dtype) and the gradients of "
               "the reduced value, each in its input's dtype and shape; ``bias`` is ``None`` without one."),
}


def _section(title: str, lines: list) -> str:
    return "\n".join([title, "-" * len(title), *lines])


def _entry(name: str, type_: str, text: str, default=inspect.Parameter.empty) -> list:
    head = f"{name} : {type_}" + ("" if default is inspect.Parameter.empty else f", default {default!r}")
    return [head, *textwrap.wrap(text, 92, initial_indent="    ", subsequent_indent="    ")]


def shared(*returns: str, **overrides):
    """Decorator: add the Parameters (and Returns) sections to the docstring, from the shared text.

    They go before the docstring's Examples section, or at its end.
    ``returns`` names entries of :data:`RETURNS`; ``overrides`` replaces (or
    adds) entries of :data:`PARAMETERS` for this function: ``name=(type,
    description)``.
    """
    def fill(fn):
        table = {**PARAMETERS, **overrides}
        params = []
        for p in inspect.signature(fn).parameters.values():
            if p.name in table:
                params += _entry(p.name, *table[p.name], p.default)
        sections = [_section("Parameters", params)]
        if returns:
            sections.append(_section("Returns", [line for r in returns for line in _entry(r, *RETURNS[r])]))
        doc = inspect.cleandoc(fn.__doc__ or "")
        head, sep, examples = doc.partition("\nExamples\n--------")
        fn.__doc__ = "\n\n".join([head.rstrip(), *sections]) + ("\n\n" + sep.lstrip("\n") + examples if sep else "")
        return fn

    return fill
