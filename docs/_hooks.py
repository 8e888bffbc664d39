"""mkdocs hooks: the maths as MathML at build time, and the docstrings' reStructuredText roles as code.

Maths.  ``pymdownx.arithmatex`` (generic mode) keeps the TeX of ``\\( ... \\)``
and ``\\[ ... \\]`` away from Markdown and wraps it in
``<span class="arithmatex">`` / ``<div class="arithmatex">``; this hook turns
each into MathML with latex2mathml (pure Python, in the ``docs`` extra).
Browsers render MathML natively (MathML Core: Chromium 109+, Firefox,
Safari), so the site needs no script, font or network to show its maths, and
a page shows them as soon as it loads.  A command latex2mathml does not know
fails the build (it would otherwise be shown as its raw name).  Block
equations sit in ``<div class="math-block">``, which scrolls sideways rather
than overflowing a narrow column (docs/stylesheets/extra.css).

Roles.  The docstrings cross-reference with Sphinx roles (``:func:`gamma_ce```,
``:mod:`gammace_ref.testing.regimes```), which Markdown shows as the role's
name followed by the code.  This drops the role, keeping the code (and, for
``~a.b.c``, shows ``c`` as Sphinx does).
"""

import html
import re

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):<code>(~?)([^<]*)</code>")
_MATH = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)
_DELIMITERS = {"span": ("\\(", "\\)", "inline"), "div": ("\\[", "\\]", "block")}
# Rewritten before conversion: `\\[2pt]` (a row break with extra space; latex2mathml would print
# "[2pt]": the space is cosmetic), and `aligned`, which latex2mathml does not know, as `split` (the
# same right/left column pairs).
_REWRITE = ((re.compile(r"\\\\\[[^\]]*\]"), r"\\\\"), (re.compile(r"\{aligned\}"), "{split}"))
# In the MathML: a command or an alignment `&` that latex2mathml passed through as text.
_LEFT_OVER = re.compile(r">[^<]*(\\[A-Za-z]|&(?![#A-Za-z0-9]+;))[^<]*<")


def _code(match):
    tilde, name = match.groups()
    return f"<code>{name.rsplit('.', 1)[-1] if tilde else name}</code>"


def tex_to_mathml(tex: str, display: str, where: str = "") -> str:
    """MathML for ``tex`` (``display`` "inline" or "block"); ``ValueError`` for TeX it cannot render."""
    from latex2mathml.converter import convert

    for pattern, replacement in _REWRITE:
        tex = pattern.sub(replacement, tex)
    try:
        out = convert(tex, display=display)
    except Exception as exc:  # latex2mathml raises its own types for malformed TeX
        raise ValueError(f"{where}: cannot convert the TeX {tex!r} to MathML: {exc}") from exc
    left = _LEFT_OVER.search(out)
    if left:
        raise ValueError(f"{where}: latex2mathml does not know a command or environment of {tex!r} (it "
                         f"would show {left.group(0)[1:-1]!r}): rewrite it with what it knows")
    return out


def _math(match, where):
    tag, body = match.groups()
    opening, closing, display = _DELIMITERS[tag]
    tex = html.unescape(body).strip()
    if not (tex.startswith(opening) and tex.endswith(closing)):
        raise ValueError(f"{where}: unexpected arithmatex output {body[:80]!r}")
    mathml = tex_to_mathml(tex[len(opening):-len(closing)].strip(), display, where)
    return f'<div class="math-block">{mathml}</div>' if tag == "div" else mathml


def on_page_content(html_text, page=None, **kwargs):
    where = page.file.src_uri if page is not None else "page"
    html_text = _MATH.sub(lambda m: _math(m, where), html_text)
    return _ROLE.sub(_code, html_text)
