"""The app in a real headless Chromium (Debian's, driven by Playwright): upload, grade, screenshot.

Needs /usr/bin/chromium (`.ci/run` installs it); skipped where it is not installed.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
# Chromium on a machine without a network or a display, as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_upload_grade_and_screenshot(trusted_model, phantom_split, tmp_path):
    """A phantom is graded with its range (app.png); a noise frame is referred, not graded (app-referral.png)."""
    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from spine_hf.app.demo import build_app

    app = build_app(str(trusted_model), examples_dir=tmp_path / "examples")
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    image = next((phantom_split / "test" / "grade_4").glob("*.png"))
    screenshot = Path(__file__).resolve().parents[1] / "outputs" / "screenshots" / "app.png"
    referral_shot = screenshot.with_name("app-referral.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(noise)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            outside = []  # the app must not reach beyond this machine (fonts, scripts, telemetry)
            page.on(
                "request", lambda r: None if r.url.startswith(f"http://127.0.0.1:{port}") else outside.append(r.url)
            )
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.get_by_text("Research use only").first.wait_for()
            page.locator("input[type=file]").first.set_input_files(str(image))
            page.get_by_role("button", name="Grade", exact=True).click()
            page.get_by_text("Grade ", exact=False).locator("xpath=self::h2").first.wait_for(timeout=60_000)
            headline = page.locator("h2", has_text="Grade ").first.inner_text()
            details = page.locator("h2", has_text="Grade ").first.locator("xpath=following-sibling::p").first
            shown_range = details.inner_text()
            page.wait_for_timeout(500)
            page.screenshot(path=str(screenshot), full_page=True)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")  # a fresh page: an empty upload box
            page.locator("input[type=file]").first.set_input_files(str(noise))
            page.get_by_role("button", name="Grade", exact=True).click()
            page.locator("h2", has_text="Not graded").first.wait_for(timeout=60_000)
            referral = page.locator("h2", has_text="Not graded").first.inner_text()
            page.wait_for_timeout(500)
            page.screenshot(path=str(referral_shot), full_page=True)
            browser.close()
    finally:
        app.close()
    assert headline.startswith("Grade ") and any(name in headline for name in ("Healthy", "Doubtful", "Minimal",
                                                                                "Moderate", "Severe"))  # fmt: skip
    assert "80% range: " in shown_range
    assert referral.startswith("Not graded: this image does not look like the radiographs")
    assert screenshot.stat().st_size > 20_000 and referral_shot.stat().st_size > 20_000
    assert outside == []
