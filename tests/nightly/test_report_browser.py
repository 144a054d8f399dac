"""A real night's report.html in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no
browser download): it renders its charts, nothing runs past the page at 1200 and 800 px, nothing is logged as an
error and nothing is loaded but the file itself.

Without Chromium the test skips, except under CI (CI=true), where .ci/run installs it and its absence fails."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.nightly import run as nightly
from pipeline.store import Store
from tests.nightly.test_run import NO_GPU, TINY_PROFILE, recipe_text

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
WIDTHS = (1200, 800)
MEASURE = """() => {
  const right = e => e.getBoundingClientRect().right;
  return {scroll: document.documentElement.scrollWidth, width: window.innerWidth,
          charts: [...document.querySelectorAll("figure.chart svg")].map(svg => {
            const box = svg.getBoundingClientRect();
            return {width: box.width, height: box.height, texts: svg.querySelectorAll("text").length};
          }),
          sparks: document.querySelectorAll("svg.spark").length,
          past: [...document.body.querySelectorAll("*")].filter(e => right(e) > window.innerWidth + 0.5)
                  .map(e => e.tagName + "." + e.getAttribute("class"))};
}"""


def required(what: str, hint: str) -> None:
    """Skip on a developer's machine without it; fail under CI, which installs it."""
    message = f"{what} is not available ({hint})"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message}; CI must install it (.ci/run)")
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        required(f"Chromium ({CHROMIUM})", "apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        required("Playwright", "pip install -c constraints.txt -e '.[test]'")
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture
def report(tmp_path: Path, models_dir: Path) -> Path:
    """Two real nights (the second forced, so both built): tiny for two targets, and a recipe that fails (its error
    and log path in the failures table)."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny.yaml").write_text(recipe_text("tiny", models_dir / "tiny.onnx", TINY_PROFILE))
    (recipes / "no_cleanup.yaml").write_text(recipe_text(
        "no-cleanup", models_dir / "cleanup_needed.onnx", "        - x: {min: [1, 16], opt: [8, 16], max: [64, 16]}\n"))
    store = Store(tmp_path / "store")
    nightly.run(recipes, store, probe=NO_GPU)
    # The second night starts in a later second than the first, as nights do: two nights of one second are labelled
    # 'Dec 03' and 'Dec 03-2' without their times, which draws fewer texts than the chart checks count on.
    time.sleep(1.0 - time.time() % 1.0)
    night = nightly.run(recipes, store, probe=NO_GPU, force=True)
    return Path(night["files"]["report.html"])


def test_the_report_renders_in_chromium_without_overflow_or_errors(browser: Browser, report: Path) -> None:
    for width in WIDTHS:
        seen = visit(browser, report, width)
        assert seen["errors"] == [] and seen["loaded"] == [report.as_uri()], width
        assert seen["scroll"] <= seen["width"] == width and seen["past"] == [], (width, seen)
        (chart,) = seen["charts"]  # tiny's figure; no-cleanup never had a value
        assert chart["width"] > width * 0.8 and chart["height"] > 150 and chart["texts"] > 20, (width, chart)
        assert seen["sparks"] == 2 * 2  # tiny's two targets: engine size and build time (it is not validated)


def visit(browser: Browser, page_file: Path, width: int) -> dict:
    """The page's measurements at this viewport width, with the errors it logged and the URLs it loaded."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    loaded: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: loaded.append(request.url))
    try:
        page.goto(page_file.as_uri())
        return {**page.evaluate(MEASURE), "errors": errors, "loaded": loaded}
    finally:
        page.close()
