"""The demo page in headless Chromium (Debian's ``chromium`` driven by playwright): type a query, see images.

Skips when no Chromium binary or no playwright is installed (``make browser`` installs Chromium as root).
A screenshot of the page is saved as ``runs/demo-page.png``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = next((path for path in (shutil.which("chromium"), shutil.which("chromium-browser"),
                                   "/usr/bin/chromium") if path and Path(path).is_file()), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "runs" / "demo-page.png"

pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="no chromium binary (apt-get install chromium, or make browser)")


def test_query_shows_result_images_and_attention():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    from retrieval_fixtures import shared_server

    server = shared_server()
    profile = tempfile.mkdtemp(prefix="vlptm-chromium-")
    try:
        with sync_api.sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1200, "height": 800})
            try:
                page = context.new_page()
                page.goto(server.url + "/", wait_until="load")
                page.wait_for_function("document.getElementById('health').textContent.includes('12 images')")
                page.fill("#query", "a large red circle")
                page.press("#query", "Enter")
                page.wait_for_selector("figure.result img", timeout=60_000)
                page.wait_for_function(
                    "Array.from(document.querySelectorAll('figure.result img'))"
                    ".every(img => img.complete && img.naturalWidth > 0)", timeout=60_000)
                results = page.query_selector_all("figure.result")
                assert len(results) == 12
                assert "score" in results[0].inner_text()
                results[0].click()
                page.wait_for_selector("#detail:not([hidden])", timeout=60_000)
                tokens = [b.inner_text() for b in page.query_selector_all("#tokens button")]
                assert tokens == ["all words", "a", "large", "red", "circle"]
                page.click("#tokens button:nth-child(4)")  # "red": redraw with that word's attention
                drawn = page.evaluate("document.getElementById('attention-canvas').width")
                assert drawn > 0
                page.fill("#query", "x" * 200 + "y")  # the box's maxlength keeps the query under the limit
                assert len(page.input_value("#query")) == 200
                page.fill("#query", "a large red circle")
                page.click("#tokens button:nth-child(1)")
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=True)
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 10_000
