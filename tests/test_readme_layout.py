"""The README's Layout section stays true: every path it names exists, every module is named."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _layout():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Layout"):]
    block = section[section.index("```") + 3:]
    block = block[:block.index("```")]
    return [line.split()[0] for line in block.splitlines() if line and not line[0].isspace()]


def test_every_named_path_exists():
    for entry in _layout():
        for part in entry.rstrip(",").split(","):
            assert (ROOT / part.strip()).exists(), f"README Layout names {part!r}, which does not exist"


def test_every_module_is_named():
    named = set(_layout())
    folders = {n.rstrip("/") for n in named if n.endswith("/")}
    missing = []
    for path in sorted((ROOT / "gammace_ref").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path.name in ("__main__.py",) or (path.name == "__init__.py" and path.parent.name in ("testing", "integrations", "gammace_ref")):
            continue
        if any(rel.startswith(f + "/") for f in folders):
            continue
        if rel not in named:
            missing.append(rel)
    assert not missing, f"modules missing from the README's Layout section: {missing}"
    assert re.search(r"one line per module|import downwards", (ROOT / "README.md").read_text(encoding="utf-8"))
