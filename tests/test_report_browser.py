"""index.html as a real browser lays it out (headless Chromium): the check a person does by eye, made
repeatable. Skipped where no Chromium binary is on PATH (CI has none).

Run it (Debian: ``apt-get install -y chromium``)::

    python -m pytest -q tests/test_report_browser.py                      # the synthetic run of test_reports
    RBRPC_REPORT_DIR=runs/q python -m pytest -q tests/test_report_browser.py   # a real run's report

It builds the report, injects a probe script into a copy of index.html, lets Chromium lay the page out at
1400 and 800 px wide, and reads the probe's measurements from the DOM: the headline table starts on the
first screen; the page itself never scrolls sideways (only table wrappers do); the first column of every
scrolled table stays in view; text cells are left-aligned, numbers right-aligned; every plot is loaded and
fits its column; the contents list is in page order. A screenshot is left at ``<tmp>/index-1400.png``
(its path is printed; ``RBRPC_SCREENSHOT=path.png`` copies it there) to look at.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from robustbench_rpc.reports import build_report

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (install Debian's "
                                "'chromium' to run the browser check of index.html)")

_PROBE = """
<script>
window.addEventListener('load', () => {
  const out = {width: window.innerWidth, page_scroll_width: document.documentElement.scrollWidth};
  const head = document.getElementById('headline');
  out.headline_top = head ? head.getBoundingClientRect().top + window.scrollY : null;
  out.viewport_height = window.innerHeight;
  out.sections = [...document.querySelectorAll('section[id]')].map(s => s.id);
  out.toc = [...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href').slice(1));
  out.tables = [...document.querySelectorAll('.tbl')].map(w => {
    const id = w.closest('section').id;
    const overflow = w.scrollWidth > w.clientWidth + 1;
    w.scrollLeft = w.scrollWidth;  // scrolled all the way right
    const left = w.getBoundingClientRect().left;
    const firsts = [...w.querySelectorAll('tr')].map(r => r.children[0].getBoundingClientRect().left - left);
    const align = (sel) => [...w.querySelectorAll(sel)].map(c => getComputedStyle(c).textAlign);
    return {id, overflow, scrolled: w.scrollLeft, first_col_offsets: firsts,
            first_align: align('td:first-child'), num_align: align('td.num'),
            text_align: align('td:not(.num):not(.missing)')};
  });
  out.images = [...document.querySelectorAll('img')].map(img => ({
    alt: img.alt, loaded: img.complete && img.naturalWidth > 0, width: img.getBoundingClientRect().width,
    container: img.parentElement.getBoundingClientRect().width}));
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def _chromium(*args: str) -> str:
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    real = os.environ.get("RBRPC_REPORT_DIR")
    out = tmp_path_factory.mktemp("browser")
    if real:
        paths = build_report(Path(real), out)
    else:
        from test_reports import build_run

        build_run(out)
        paths = build_report(out)
    return paths["index.html"]


def _probe(index: Path, width: int, height: int) -> dict:
    probe = index.with_name(f"probe-{width}.html")
    probe.write_text(index.read_text().replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(f"--window-size={width},{height}", "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, "the probe script did not run"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))


@pytest.mark.parametrize("width", [1400, 800])
def test_index_html_in_a_browser(report, width):
    p = _probe(report, width, 1000)
    assert p["sections"][0] == "headline" and p["toc"] == p["sections"]
    assert p["headline_top"] < p["viewport_height"], "the headline table must start on the first screen"
    assert p["page_scroll_width"] <= p["width"] + 1, "the page scrolls sideways: something besides a table is too wide"
    assert any(t["id"] == "headline" for t in p["tables"])
    for t in p["tables"]:
        if t["overflow"]:
            assert t["scrolled"] > 0
            assert all(abs(x) <= 2 for x in t["first_col_offsets"]), f"{t['id']}: first column scrolled away"
        assert set(t["first_align"]) <= {"left"}, t["id"]
        assert set(t["num_align"]) <= {"right"}, t["id"]
        assert set(t["text_align"]) <= {"left", "start"}, t["id"]
    if width == 800:
        assert any(t["overflow"] for t in p["tables"]), "800 px: expected at least one scrolled table"
    assert p["images"], "no plots on the page"
    for img in p["images"]:
        assert img["loaded"], img["alt"]
        assert img["width"] <= img["container"] + 1, img["alt"]


def test_screenshot_for_a_person_to_look_at(report):
    shot = report.with_name("index-1400.png")
    _chromium("--window-size=1400,3000", f"--screenshot={shot}", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 50_000
    if os.environ.get("RBRPC_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["RBRPC_SCREENSHOT"])
    print(f"screenshot: {shot}")
