"""report.html in a real headless browser: Debian's chromium driven by Playwright (never a downloaded browser).

Skipped with the reason when no system Chromium is found; with CI=true that is a failure instead,
since CI installs the browser before running the tests.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from imgcls.report import write_report
from test_report import ALWAYS, noisy_copy

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# No GPU, no QUIC, and nothing Chromium would fetch on its own (component updates, sync, first-run pages),
# so every request the page makes is one the report asked for.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so the browser test must run (.ci/run installs Debian's chromium).")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    path = next((p for p in CHROMIUM_PATHS if os.access(p, os.X_OK)), None) or shutil.which("chromium")
    if path is None:
        _unavailable("no system Chromium at /usr/bin/chromium (install it with: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is missing (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.mark.parametrize("variant", ["real", "with_mistakes"])
def test_report_opens_offline_with_every_section_and_image(variant, browser, small_run, tmp_path):
    """'real': the small run as trained (no mistakes). 'with_mistakes': the same run with noisy predictions,
    so the gallery has thumbnails and Grad-CAM overlays."""
    run = tmp_path / "run"
    if variant == "real":
        shutil.copytree(small_run.run_dir, run)
    else:
        noisy_copy(small_run.run_dir, run)
    report = write_report(run)
    url = report.resolve().as_uri()

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests, problems = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(url, wait_until="load")

    assert problems == []
    assert requests and requests[0] == url
    assert [u for u in requests if u != url and not u.startswith("data:")] == []   # nothing from anywhere else

    ids = page.eval_on_selector_all("section[id]", "els => els.map(e => e.id)")
    assert set(ALWAYS) <= set(ids)
    heights = page.eval_on_selector_all("section[id]", "els => els.map(e => e.getBoundingClientRect().height)")
    assert all(h > 40 for h in heights)
    for nav_target in page.eval_on_selector_all("nav a", "els => els.map(e => e.getAttribute('href'))"):
        assert nav_target[1:] in ids

    images = page.eval_on_selector_all(
        "img", "els => els.map(e => ({w: e.naturalWidth, h: e.naturalHeight, done: e.complete, alt: e.alt}))")
    assert len(images) >= 5
    assert [im for im in images if not (im["done"] and im["w"] > 0 and im["h"] > 0)] == []
    if variant == "with_mistakes":
        assert any(im["alt"].startswith("Grad-CAM") for im in images)

    shot = tmp_path / f"report-{variant}.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    with Image.open(shot) as im:
        assert im.size[0] >= 1280 and im.size[1] > 2000   # the whole page, not just the viewport
