"""The playground in a real browser: Playwright driving Debian's chromium against a live server.

Skipped only when no chromium is installed and QUILL_REQUIRE_BROWSER is unset (CI sets it,
and .ci/run installs chromium, so there it never skips silently). QUILL_SCREENSHOT_DIR: also
copy the screenshot there. QUILL_PLAYGROUND_RUN: serve that run instead of a random tiny one
(for the screenshot in benchmarks/results).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from quillgpt.serve.app import create_app
from quillgpt.serve.loading import load_serving_run
from serve_support import LiveServer, make_run


def chromium_path() -> str | None:
    for candidate in (os.environ.get("QUILL_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture
def browser():
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        if os.environ.get("QUILL_REQUIRE_BROWSER"):
            pytest.fail("QUILL_REQUIRE_BROWSER is set but chromium or playwright is missing: apt-get install chromium")
        pytest.skip("no chromium (apt-get install chromium) or no playwright")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking"])
        yield browser
        browser.close()


def test_playground_streams_text_and_shows_attention(browser, tmp_path: Path) -> None:
    run_dir = os.environ.get("QUILL_PLAYGROUND_RUN") or make_run(tmp_path / "random-tiny", chat=False)
    run = load_serving_run(run_dir)
    block = run.config.model.block_size
    assert block < 300
    with LiveServer(create_app(run)) as live:
        page = browser.new_page(viewport={"width": 1280, "height": 940})
        page.goto(live.url + "/")
        page.wait_for_function("document.getElementById('model-info').textContent.includes('step')")
        page.fill("#prompt", "ROMEO:\n")
        # Enough tokens that the stream takes a while even for a tiny model; the attention view
        # then shows the newest block_size of them.
        page.eval_on_selector("#max-tokens", "el => { el.value = 300; el.dispatchEvent(new Event('input')); }")
        page.evaluate("""() => {
            window.__pieces = [];
            new MutationObserver(() => window.__pieces.push(document.getElementById('completion').textContent.length))
                .observe(document.getElementById('completion'), {childList: true, characterData: true, subtree: true});
        }""")
        page.click("#generate")
        page.wait_for_function("document.body.dataset.generated === 'done'", timeout=30_000)
        pieces = page.evaluate("window.__pieces")
        assert len([n for n in pieces if n > 0]) >= 2  # the text arrived in several pieces: it streamed
        assert page.text_content("#completion")
        assert "done (length)" in page.text_content("#status")

        page.click("#inspect")
        page.wait_for_selector("#attention-panel:not([hidden]) .tok")
        n_tokens = page.locator("#tokens .tok").count()
        assert n_tokens == block  # the newest block_size characters of prompt + reply
        page.select_option("#layer", str(run.config.model.n_layer - 1))
        page.wait_for_function("document.getElementById('status').textContent.includes('layer "
                               f"{run.config.model.n_layer - 1}')")
        token = page.locator("#tokens .tok").nth(n_tokens // 2)
        token.hover()
        page.wait_for_selector("#tooltip:not([hidden])")
        assert "%" in page.text_content("#tooltip") and "here:" in page.text_content("#tooltip")
        page.locator("#heatmap").scroll_into_view_if_needed()
        box = page.locator("#heatmap").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.8)
        assert "attends to" in page.text_content("#cell-info")
        token.hover()  # the tooltip of alternatives, in the screenshot
        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("QUILL_SCREENSHOT_DIR"):
            target = Path(os.environ["QUILL_SCREENSHOT_DIR"])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, target / "playground.png")
