"""report.html rendered by a real browser (headless Chromium): the DOM after rendering holds the
tables and the SVG plots, and a screenshot is not blank. Skipped, with the reason printed, only
where no Chromium is installed (`apt-get install -y chromium`)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import synthetic  # noqa: E402

from sizewise.report.html import render  # noqa: E402

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).exists()), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if CHROMIUM is None:
    print("test_html_browser: skipped: no chromium installed (apt-get install -y chromium)", file=sys.stderr)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install -y chromium)")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="sizewise-chromium-") as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=90)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("html") / "report.html"
    p.write_text(render(synthetic.study()))
    return p


def test_rendered_dom_has_the_table_and_the_svg_plots(page):
    r = _chromium("--dump-dom", page.as_uri())
    dom = r.stdout
    assert r.returncode == 0 and "<body" in dom, r.stderr[-2000:]
    table = dom[dom.index('<table id="measured">'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 6 and "int4-gptq-g64" in table and "busy! " in table
    assert dom.count("<svg") == 2 and 'id="plot-size"' in dom and 'id="plot-speed"' in dom
    assert dom.count("<path") > 50  # the plots' marks and glyphs really are in the DOM


def test_screenshot_is_not_blank(page, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    png = tmp_path / "report.png"
    r = _chromium("--window-size=1280,2000", "--hide-scrollbars", f"--screenshot={png}", page.as_uri())
    assert png.exists() and png.stat().st_size > 10_000, r.stderr[-2000:]
    img = imread(png)[..., :3]
    colours = np.unique((img.reshape(-1, 3) * 255).round().astype(np.uint8), axis=0)
    assert len(colours) > 50  # text, table shading, plot colours: far from a single colour
    dark = (img.mean(axis=2) < 0.5).mean()
    assert 0.005 < dark < 0.5  # some ink on a mostly light page
