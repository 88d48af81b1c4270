"""report.html: `vggbn report` writes it beside report.md, self-contained (figures as data URIs, no
external reference), and it reads in a browser: headless Chromium (Debian's chromium +
chromium-driver, driven by selenium) loads it with no console error, shows the table and every
figure at a readable size, and sorts a table by the header clicked. A full-page screenshot goes
to tmp_path and to $VGGBN_SCREENSHOT_DIR when set."""

import base64
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from analysis.report_html import write_html
from conftest import vggbn

PNG = b"\x89PNG\r\n\x1a\n"
WINDOW = (1280, 900)


class _Page(HTMLParser):
    """Every element's tag and attributes, and the text of <script> and <style> elements."""

    def __init__(self, text: str):
        super().__init__()
        self.elements, self.code, self._in = [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in = tag if tag in ("script", "style") else None

    def handle_data(self, data):
        if self._in:
            self.code.append(data)

    def handle_endtag(self, tag):
        self._in = None


def _data(uri: str) -> bytes:
    assert uri.startswith("data:") and ";base64," in uri, uri[:60]
    return base64.b64decode(uri.split(",", 1)[1], validate=True)


@pytest.fixture(scope="module")
def report(smoke_run, tmp_path_factory):
    """The smoke sweep's report, written by the real command."""
    out = tmp_path_factory.mktemp("html") / "report"
    r = vggbn("report", smoke_run[0], "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (a few seconds to start)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium and chromium-driver (see .ci/run)")
        pytest.skip("no chromium/chromedriver: apt-get install chromium chromium-driver to render report.html")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(driver))
    yield d
    d.quit()


def _open(browser, page: Path) -> list[dict]:
    """Load the page; return the console messages it logged (all levels)."""
    browser.get_log("browser")  # drop what an earlier page left
    browser.get(page.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    return browser.get_log("browser")


def _column(browser, table, col: int) -> list[str]:
    return browser.execute_script(
        "return Array.from(arguments[0].tBodies[0].rows, r => r.cells[arguments[1]].textContent.trim())",
        table, col)


def _key(cell: str) -> float:
    return float(re.match(r"[-+]?\d+(\.\d+)?", cell.replace("\u2212", "-")).group())


def test_report_html_is_self_contained(report):
    out, stdout = report
    assert str(out / "report.md") in stdout and str(out / "report.html") in stdout
    text = (out / "report.html").read_text()
    page = _Page(text)
    md = (out / "report.md").read_text()

    # nothing the page would fetch: every URL-valued attribute is a data URI or an in-page anchor
    for tag, attrs in page.elements:
        for name in ("src", "href", "srcset", "action", "data", "poster"):
            v = attrs.get(name)
            if v is not None:
                assert v.startswith(("data:", "#")), f"<{tag} {name}={v[:80]}>"
    assert not re.search(r"url\(|@import|https?://|file:", "".join(page.code))
    csp = next(a["content"] for t, a in page.elements if a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "img-src data:" in csp

    # every figure report.md links is in the page, byte for byte, as a PNG
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(figures) >= 3  # accuracy, learning curves, Santurkar's probes
    imgs = [a["src"] for t, a in page.elements if t == "img"]
    assert len(imgs) == len(figures)
    for src, fig in zip(imgs, figures):
        assert _data(src).startswith(PNG) and _data(src) == (out / fig).read_bytes(), fig

    # the CSV and LaTeX links download the files themselves
    links = {a.get("download"): a["href"] for t, a in page.elements if t == "a" and a.get("download")}
    assert _data(links["table.csv"]) == (out / "table.csv").read_bytes()
    assert _data(links["table.tex"]) == (out / "table.tex").read_bytes()
    # the report's own words are there (one source: the Markdown)
    assert "Comparison table" in text and "Provenance" in text


def test_report_html_in_chromium(report, browser, tmp_path):
    out, _ = report
    logs = _open(browser, out / "report.html")
    assert not [m for m in logs if m["level"] == "SEVERE"], logs

    table = browser.find_element("css selector", "#comparison-table + .table-scroll > table")
    assert table.is_displayed() and table.size["height"] > 0
    csv = pd.read_csv(out / "table.csv")
    heads = [h.text for h in table.find_elements("css selector", "thead th")]
    shown = _column(browser, table, heads.index("Variant"))  # the baseline's says "(baseline)"
    assert len(shown) == len(csv) and all(any(c.startswith(v) for c in shown) for v in csv["variant"])

    inner = browser.execute_script("return window.innerWidth")
    imgs = browser.execute_script("return Array.from(document.images, i => ({complete: i.complete, "
                                  "natural: i.naturalWidth, width: i.getBoundingClientRect().width, "
                                  "visible: i.offsetParent !== null}))")
    md_figs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text())
    assert len(imgs) == len(md_figs)
    for img in imgs:  # decoded, shown, readable at a 1280-px window and within it
        assert img["complete"] and img["natural"] > 0 and img["visible"], img
        assert 300 <= img["width"] <= inner, img

    # the whole page as a reader sees it on opening
    w, h = browser.execute_script("return [document.documentElement.scrollWidth, "
                                  "document.documentElement.scrollHeight]")
    assert w <= inner  # nothing wider than the window: wide tables scroll inside their box
    shot = base64.b64decode(browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}})["data"])
    assert shot.startswith(PNG) and int.from_bytes(shot[20:24], "big") >= h
    for folder in [tmp_path, os.environ.get("VGGBN_SCREENSHOT_DIR")]:
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "report_html.png").write_bytes(shot)

    # a figure drawn wider than the column shows at full size on a click, and back on another
    fig = next(f for f in browser.find_elements("css selector", "figure img")
               if browser.execute_script("return arguments[0].naturalWidth", f) > f.size["width"] + 1)
    fitted = fig.size["width"]
    fig.click()
    assert fig.size["width"] == browser.execute_script("return arguments[0].naturalWidth", fig)
    fig.click()
    assert fig.size["width"] == fitted

    # a click on the accuracy header sorts the rows by its number, again reverses them
    col = next(i for i, h in enumerate(heads) if h.startswith("Test acc"))
    th = table.find_elements("css selector", "thead th")[col]
    before = _column(browser, table, col)
    th.find_element("tag name", "button").click()
    up = _column(browser, table, col)
    assert th.get_attribute("aria-sort") == "ascending"
    assert sorted(up) == sorted(before) and [_key(c) for c in up] == sorted(_key(c) for c in up)
    th.find_element("tag name", "button").click()
    down = _column(browser, table, col)
    assert th.get_attribute("aria-sort") == "descending" and [_key(c) for c in down] == sorted(
        (_key(c) for c in down), reverse=True)

    assert not [m for m in browser.get_log("browser") if m["level"] == "SEVERE"]


SORT_MD = """# t <script>alert(1)</script>

| Variant | Test % | n |
|---|---|---:|
| a | 86.61 ± 0.50 | 3 |
| b | — | 12 |
| c | 9.5 ± 1.0 | 10 |
| d | 100.20 ± 0.10 | 1 |
| e | \u22122.5 ± 0.3 | 2 |
| f |  | 20 |
| g | 9.45 ± 0.20 | 4 |
| h | \u221210.0 ± 1.0 | 30 |

<img src=x onerror=alert(2)> ![outside](../secret.png)
"""


def test_sorting_numbers_dashes_keyboard_and_escaping(browser, tmp_path):
    """The sort script on a table of the report's kinds of cells: "86.61 ± 0.50" sorts by 86.61,
    9.45 < 9.5 and −10 < −2.5 (which a text sort, even a "numeric" collation, gets wrong), "—" and
    empty go last both ways; Enter on a header sorts, a third press restores the order. Text from
    the Markdown is escaped; a file outside the report's folder is not embedded."""
    from selenium.webdriver.common.keys import Keys

    (tmp_path / "secret.png").write_bytes(PNG)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "t.md").write_text(SORT_MD)
    page = write_html(tmp_path / "r" / "t.md")
    text = page.read_text()
    assert text.count("<script") == 1 and "&lt;script&gt;alert(1)" in text and "<img src=x" not in text
    assert "figure not embedded" in text and "data:image" not in text

    assert not [m for m in _open(browser, page) if m["level"] == "SEVERE"]
    table = browser.find_element("css selector", "table")
    buttons = table.find_elements("css selector", "thead th button")
    variants = lambda: "".join(_column(browser, table, 0))  # noqa: E731
    buttons[1].click()
    assert variants() == "hegcadbf"
    buttons[1].click()
    assert variants() == "dacgehbf"
    buttons[2].send_keys(Keys.ENTER)  # keyboard: n, numerically (10 after 2, not before)
    assert variants() == "deagcbfh"
    assert [th.get_attribute("aria-sort") for th in table.find_elements("css selector", "thead th")] == [
        None, None, "ascending"]
    buttons[2].send_keys(Keys.ENTER)
    buttons[2].send_keys(Keys.ENTER)
    assert variants() == "abcdefgh" and table.find_elements("css selector", "th[aria-sort]") == []
