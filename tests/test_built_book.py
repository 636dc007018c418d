"""The built HTML (after `make book`): every chapter page, its figures, no error output.

Runs when FFATTN_BOOK_HTML names the built folder (`make test` sets it after the build)."""
import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = os.environ.get("FFATTN_BOOK_HTML")
pytestmark = pytest.mark.skipif(not HTML, reason="set FFATTN_BOOK_HTML to a built book (make test does)")


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for entry in toc.get("chapters", []):
        files.append(entry["file"])
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


@pytest.mark.parametrize("page", toc_files())
def test_every_page_is_built_without_errors(page):
    path = Path(HTML) / f"{page}.html"
    assert path.exists(), f"{path} missing"
    html = path.read_text()
    for bad in ("Traceback (most recent call last)", 'class="output stderr"', "Error in cell"):
        assert bad not in html, f"{page}: {bad!r} in the page"
    if (ROOT / f"{page}.ipynb").exists():
        nb = (ROOT / f"{page}.ipynb").read_text()
        if "plt." in nb or "plot_" in nb:
            assert re.search(r"<img[^>]+\.png", html), f"{page}: no figure"


@pytest.mark.parametrize("page", [f for f in toc_files() if (ROOT / f"{f}.ipynb").exists()])
def test_markdown_outputs_render_as_tables_not_pipes(page):
    """A table a chapter displays as Markdown must come out as an HTML table, not as a
    paragraph of '|' characters (myst-nb renders Markdown outputs as CommonMark unless told)."""
    html = (Path(HTML) / f"{page}.html").read_text()
    assert not re.search(r"<p>\|[^<]*\|---", html), f"{page}: a Markdown table rendered as text"
    if "report.markdown_report" in (ROOT / f"{page}.ipynb").read_text():
        assert html.count("<table") >= 4, f"{page}: the results tables are missing"
