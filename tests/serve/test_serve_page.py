"""The web page in headless Chromium (Debian's package, driven by Playwright): upload, see the class and the overlay."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serve_helpers import CLASSES, direct_probabilities, png_bytes, running_server

from vitkit import VisionTransformer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytest.importorskip("uvicorn", reason="vitkit serve needs the `serve` extra (uvicorn)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the page test needs Playwright (the `dev` extra)")
if not CHROMIUM.is_file():
    pytest.skip(
        f"Chromium is not installed at {CHROMIUM} "
        "(`apt-get install chromium`; `make test` installs it where apt works)",
        allow_module_level=True,
    )

from vitkit.serve import create_app  # noqa: E402


@pytest.fixture
def page_url(served_model: VisionTransformer) -> str:
    with running_server(create_app(served_model, name="tiny-cifar")) as url:
        yield url


def test_upload_shows_the_predicted_class_bars_and_attention_overlay(
    page_url: str, served_model: VisionTransformer, tmp_path: Path
) -> None:
    first, second = png_bytes(11, (48, 40)), png_bytes(12, (40, 48))
    expected = [CLASSES[int(i)] for i in direct_probabilities(served_model, [first, second]).argmax(dim=1)]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(page_url)
            sync_api.expect(page.locator("#model-info")).to_contain_text("tiny-cifar: 10 classes, 16x16 input")

            page.set_input_files("#file-input", files=[{"name": "first.png", "mimeType": "image/png", "buffer": first}])
            sync_api.expect(page.locator("#prediction")).to_have_text(expected[0], timeout=30_000)
            assert page.locator("#bars li").count() == 5
            assert page.locator("#bars li .label").first.inner_text() == expected[0]
            for overlay in ("#heatmap", "#model-view", "#preview"):
                loaded = page.eval_on_selector(overlay, "img => img.complete && img.naturalWidth > 0")
                assert loaded, f"{overlay} did not load"
            assert page.eval_on_selector("#heatmap", "img => [img.naturalWidth, img.naturalHeight]") == [16, 16]
            assert page.eval_on_selector("#heatmap", "img => img.getBoundingClientRect().width") > 100, (
                "overlay shown large"
            )
            screenshot = Path(os.environ.get("VITKIT_SCREENSHOT_DIR", tmp_path)) / "serve_page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 0

            # Dropping a second image onto the drop zone classifies it too.
            transfer = page.evaluate_handle(
                """([bytes, name]) => {
                    const transfer = new DataTransfer();
                    transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
                    return transfer;
                }""",
                [list(second), "second.png"],
            )
            page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
            sync_api.expect(page.locator("#status")).to_have_text("second.png: done", timeout=30_000)
            assert page.locator("#prediction").inner_text() == expected[1]

            # A file that is not an image: the server's error is shown, and the page keeps working.
            page.set_input_files(
                "#file-input", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}]
            )
            sync_api.expect(page.locator("#error")).to_contain_text("cannot read notes.png as an image", timeout=30_000)
        finally:
            browser.close()
