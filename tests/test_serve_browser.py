"""End to end in a real browser: the web page of ``u2net serve`` in headless Chromium (Debian's
``chromium`` package, driven by Playwright) against the server on 127.0.0.1.

Uploads an image through the file picker, waits for the cut-out, re-runs it unstretched, with a
threshold and with a background colour, downloads the PNG, drops a second image on the drop zone
and checks that an error is shown for a text file. The screenshot is kept in ``tests/artifacts/serve_e2e.png``.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason="chromium is not installed (apt-get install chromium; .ci/run does it)"
)
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from u2net.serve import ServeSettings, create_app  # noqa: E402

from .conftest import save_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server (uvicorn) on 127.0.0.1, a free port, serving a tiny random-weight u2netp."""
    checkpoint = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_tiny_checkpoint(checkpoint)
    app = create_app(checkpoint, ServeSettings(device="cpu"))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)
    port = uv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


def _photo(path: Path, size=(320, 240)) -> Path:
    """A subject (a disc and a bar) on a gradient."""
    w, h = size
    gradient = np.linspace(40, 200, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    image = Image.fromarray((gradient * [0.6, 0.8, 1.0]).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((w * 0.3, h * 0.2, w * 0.7, h * 0.8), fill=(230, 120, 30))
    draw.rectangle((w * 0.45, h * 0.5, w * 0.55, h * 0.95), fill=(60, 30, 20))
    image.save(path)
    return path


def test_upload_see_result_and_download(server, tmp_path):
    photo = _photo(tmp_path / "photo.png")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.set_default_timeout(20_000)

            page.goto(server + "/")
            assert "background removal" in page.title()
            page.wait_for_function("document.getElementById('model-info').textContent.includes('u2netp')")

            # Upload with the picker; the result appears beside the original.
            with page.expect_response(lambda r: r.url.endswith("/remove-background")) as first:
                page.set_input_files("#file-input", str(photo))
            assert first.value.status == 200
            _wait_for_image(page, "result")
            _wait_for_image(page, "original")
            assert page.get_attribute("#download", "aria-disabled") == "false"
            assert "320×240" in page.text_content("#status")
            badge = page.text_content("#qa-badge")  # the mask's QA: flags or "looks good", and a confidence
            assert page.is_visible("#qa-badge") and "confidence" in badge and "%" in badge
            ARTIFACTS.mkdir(exist_ok=True)
            shot = tmp_path / "serve_e2e.png"
            page.screenshot(path=str(shot), full_page=True)
            shutil.copyfile(shot, ARTIFACTS / "serve_e2e.png")

            # Unchecking "stretch" shows the model's own probabilities: the random model's near-constant map
            # is no longer spread over the full 0..255 range.
            assert np.ptp(_result_alpha(page)) == 255
            previous = page.get_attribute("#result", "src")
            with page.expect_response(lambda r: r.url.endswith("/remove-background")) as unstretched:
                page.uncheck("#stretch")
            assert unstretched.value.status == 200
            page.wait_for_function(f"document.getElementById('result').src !== {previous!r}")
            assert np.ptp(_result_alpha(page)) < 255
            page.check("#stretch")
            page.wait_for_function("document.body.dataset.busy === 'false'")

            # A threshold and a background colour re-run the request.
            previous = page.get_attribute("#result", "src")
            with page.expect_response(lambda r: r.url.endswith("/remove-background")) as second:
                page.check("#use-threshold")
            assert second.value.status == 200
            page.wait_for_function(f"document.getElementById('result').src !== {previous!r}")
            _wait_for_image(page, "result")
            with page.expect_response(lambda r: r.url.endswith("/remove-background")) as third:
                page.check("#use-bg")
            assert third.value.status == 200
            page.check("#crop")  # the last change wins; earlier requests are aborted
            page.uncheck("#crop")
            page.uncheck("#use-bg")
            page.wait_for_function("document.body.dataset.busy === 'false'")
            _wait_for_image(page, "result")

            # Download the PNG.
            with page.expect_download() as info:
                page.click("#download")
            download = info.value
            assert download.suggested_filename == "photo-cutout.png"
            saved = tmp_path / "downloaded.png"
            download.save_as(saved)
            with Image.open(saved) as result:
                assert result.format == "PNG" and result.mode == "RGBA" and result.size == (320, 240)
                assert set(np.unique(np.asarray(result)[..., 3])) <= {0, 255}  # the threshold applied

            # Drag and drop a second image on the drop zone.
            dropped = io.BytesIO()
            Image.open(photo).resize((160, 120)).save(dropped, format="PNG")
            data_transfer = page.evaluate_handle(
                """(b64) => {
                    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    const transfer = new DataTransfer();
                    transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
                    return transfer;
                }""",
                base64.b64encode(dropped.getvalue()).decode(),
            )
            with page.expect_response(lambda r: r.url.endswith("/remove-background")) as fourth:
                page.dispatch_event("#drop-zone", "drop", {"dataTransfer": data_transfer})
            assert fourth.value.status == 200
            page.wait_for_function("document.getElementById('status').textContent.includes('160×120')")
            assert page.get_attribute("#download", "download") == "dropped-cutout.png"

            # An error is shown in the page.
            with page.expect_response(lambda r: r.url.endswith("/remove-background")) as fifth:
                page.set_input_files(
                    "#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}]
                )
            assert fifth.value.status == 415
            page.wait_for_selector("#error", state="visible")
            assert "not an image" in page.text_content("#error")
            assert page.get_attribute("#download", "aria-disabled") == "true"
            page.screenshot(path=str(tmp_path / "serve_e2e_error.png"), full_page=True)
            shutil.copyfile(tmp_path / "serve_e2e_error.png", ARTIFACTS / "serve_e2e_error.png")

            assert page_errors == []
        finally:
            browser.close()


def _result_alpha(page) -> np.ndarray:
    """The alpha channel of the cut-out the page shows (fetched from its blob URL)."""
    _wait_for_image(page, "result")
    encoded = page.evaluate(
        """async () => {
            const response = await fetch(document.getElementById('result').src);
            const bytes = new Uint8Array(await response.arrayBuffer());
            let text = '';
            for (const byte of bytes) text += String.fromCharCode(byte);
            return btoa(text);
        }"""
    )
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        return np.asarray(image.convert("RGBA"))[..., 3]


def _wait_for_image(page, element_id: str) -> None:
    page.wait_for_function(
        "(id) => { const img = document.getElementById(id); "
        "return !img.hidden && img.complete && img.naturalWidth > 0; }",
        arg=element_id,
    )
