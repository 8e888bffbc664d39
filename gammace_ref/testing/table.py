"""The one table renderer of the tools: plain text (aligned columns) or Markdown.

Used by ``gammace-ref accuracy`` and ``gammace-ref conformance``, the oracle's
:class:`~gammace_ref.testing.oracle.Report` and the benchmarks.

>>> print(render(["case", "rel err"], [["p_to_1", "3.4e-16"], ["masked", None]]))
case    rel err
p_to_1  3.4e-16
masked
>>> print(render(["case", "rel err"], [["p_to_1", "3.4e-16"]], markdown=True))
| case | rel err |
|---|---:|
| p_to_1 | 3.4e-16 |
"""

from __future__ import annotations

__all__ = ["render"]


def render(headers, rows, *, markdown: bool = False, align: str | None = None) -> str:
    """``rows`` (sequences of cells, ``None`` printed empty) under ``headers``, as text or Markdown.

    ``align`` has one ``"<"`` (left) or ``">"`` (right) per column; by
    default the first column is left-aligned and the others right-aligned.
    Text columns are padded to their widest cell and separated by two spaces;
    Markdown cells are not padded (the alignment goes in the rule under the
    header).
    """
    headers = [str(h) for h in headers]
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    align = align or "<" + ">" * (len(headers) - 1)
    if markdown:
        rule = "|" + "|".join("---:" if a == ">" else "---" for a in align) + "|"
        return "\n".join(["| " + " | ".join(headers) + " |", rule] + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(map(len, column)) for column in zip(headers, *rows)]
    return "\n".join("  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(line, align, widths)).rstrip()
                     for line in [headers, *rows])
