"""mkdocs hook: render the reStructuredText roles of the docstrings as code.

The docstrings cross-reference with Sphinx roles (``:func:`gamma_ce```,
``:mod:`gammace_ref.testing.regimes```), which Markdown shows as the role's
name followed by the code.  This drops the role, keeping the code (and, for
``~a.b.c``, shows ``c`` as Sphinx does).
"""

import re

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):<code>(~?)([^<]*)</code>")


def _code(match):
    tilde, name = match.groups()
    return f"<code>{name.rsplit('.', 1)[-1] if tilde else name}</code>"


def on_page_content(html, **kwargs):
    return _ROLE.sub(_code, html)
