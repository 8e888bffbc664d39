"""The documentation site at 1280 px, in a real browser: every page loads offline (no script, style
or font from the network; the maths is MathML made at build time), and no table or equation is
wider than the text column.

Builds the site (``mkdocs build --strict``), then headless Chromium lays out every page at a
1280 px wide window: a script added to a copy of the page measures each table and block equation
against the column and the page's own width, and Chromium prints the DOM with the result; it also
takes a full-page screenshot of each page.  Skipped where Chromium (Debian: ``apt-get install
chromium``) or the docs extra is not installed.

As a script, to look at the pages (screenshots in DIR, default ./site-screenshots)::

    python tests/test_docs_site.py [DIR]
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 1280
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)
MISSING = [m for m in ("mkdocs", "material", "mkdocstrings", "latex2mathml") if importlib.util.find_spec(m) is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)"),
    pytest.mark.skipif(bool(MISSING), reason=f"the docs extra is not installed (no {', '.join(MISSING)})"),
]

# Runs in the page once it has loaded; writes its findings into <pre id="layout-check">.
CHECK = """
<script>
window.addEventListener("load", () => {
  const column = document.querySelector(".md-content__inner") || document.body;
  const limit = column.getBoundingClientRect().right;
  const wide = [];
  const note = (el, right) => wide.push({tag: el.tagName.toLowerCase(), right: Math.round(right),
    limit: Math.round(limit), text: el.textContent.replace(/\\s+/g, " ").trim().slice(0, 80)});
  for (const el of document.querySelectorAll(".md-typeset table, .md-typeset math")) {
    const r = el.getBoundingClientRect();  // past the text column
    if (r.width > 0 && r.right > limit + 1) note(el, r.right);
  }
  // The boxes that scroll sideways (the theme's table wrapper reaches past the column on purpose):
  // their content must fit them, not be cut and scrolled.
  for (const el of document.querySelectorAll(".md-typeset .math-block, .md-typeset .md-typeset__scrollwrap")) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && el.scrollWidth > el.clientWidth + 1) note(el, r.left + el.scrollWidth);
  }
  const external = [...document.querySelectorAll("script[src], link[href], img[src]")]
    .map(e => e.getAttribute("src") || e.getAttribute("href"))
    .filter(u => /^(https?:)?\\/\\//.test(u) && !/\\.(html?)$/.test(u));
  const out = document.createElement("pre");
  out.id = "layout-check";
  out.textContent = JSON.stringify({width: innerWidth, scrollWidth: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight, wide, external,
    math: document.querySelectorAll("math").length, tex: /\\\\\\(|\\\\\\[/.test(column.innerText)});
  document.body.appendChild(out);
});
</script>
"""


def _chromium(*args, timeout=120):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-extensions", "--allow-file-access-from-files", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def build_site(out: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", ROOT / "mkdocs.yml",
                        "-d", out], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def check_pages(site: Path, shots: Path) -> dict:
    """{page: the check's findings}; a full-page screenshot of each page in ``shots``."""
    shots.mkdir(parents=True, exist_ok=True)
    results = {}
    for page in sorted(site.glob("**/index.html")):
        rel = page.parent.relative_to(site).as_posix()
        name = "index" if rel == "." else rel
        probe = page.with_name("layout-check.html")  # beside the page: its relative links still resolve
        probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
        dom = _chromium(f"--window-size={WIDTH},900", "--dump-dom", probe.as_uri()).stdout
        found = re.search(r'<pre id="layout-check">(.*?)</pre>', dom, re.S)
        assert found, f"{name}: the check did not run (chromium printed {dom[-300:]!r})"
        result = json.loads(found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                            .replace("&amp;", "&"))
        shot = shots / f"{name.replace('/', '_')}.png"
        _chromium(f"--window-size={WIDTH},{min(result['height'], 16000)}", f"--screenshot={shot}", page.as_uri())
        result["screenshot"] = str(shot)
        results[name] = result
        probe.unlink()
    return results


def _problems(results: dict) -> list:
    problems = []
    for name, r in results.items():
        if r["scrollWidth"] > r["width"]:
            problems.append(f"{name}: the page is {r['scrollWidth']} px wide in a {r['width']} px window")
        problems += [f"{name}: a {w['tag']} reaches {w['right']} px, past the column's {w['limit']} px: "
                     f"{w['text']!r}" for w in r["wide"]]
        problems += [f"{name}: loads {u} from the network" for u in r["external"]]
        if r["tex"]:
            problems.append(f"{name}: raw TeX delimiters left in the text")
    return problems


def test_every_page_fits_1280_px_and_reads_offline(tmp_path):
    site = tmp_path / "site"
    build_site(site)
    shots = Path(os.environ.get("GAMMACE_SCREENSHOTS", tmp_path / "screenshots"))
    results = check_pages(site, shots)
    print(f"screenshots: {shots}")
    assert {"index", "loss", "numerics", "oracle", "api"} <= set(results)
    assert results["loss"]["math"] > 50 and results["index"]["math"] > 0  # the maths is MathML
    problems = _problems(results)
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    if CHROMIUM is None or MISSING:
        sys.exit(f"needs chromium and the docs extra (missing: {', '.join(MISSING) or 'chromium'})")
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "site-screenshots").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        build_site(Path(tmp) / "site")
        found = check_pages(Path(tmp) / "site", out)
    for line in _problems(found) or ["every page fits 1280 px and loads nothing from the network"]:
        print(line)
    print(f"screenshots: {out}")
