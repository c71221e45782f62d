"""`inspect` writes a report (with a sweep's section) that a real headless browser opens with every image loaded
and no console error."""
import os
from pathlib import Path

import pytest

from analysis.cli import main

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                                reason="Debian's chromium is not installed (CI installs it and runs this test)")


def test_report_opens_in_a_headless_browser_with_every_image_loaded(analysis_env, sweep_report, tmp_path):
    from playwright.sync_api import sync_playwright

    env = analysis_env
    assert main(["inspect", "--extract-config", str(env.extract_yaml), "--out", str(tmp_path), "--device", "cpu",
                 "--data", str(env.data_json), "--image-root", str(env.image_root), "--keys", *env.keys[:3],
                 "--timesteps", "389", "--mmvp-vlm", str(env.mmvp_vlm), "--winoground", str(env.winoground),
                 "--clip-config", str(env.clip_yaml), "--sweeps", str(sweep_report)]) == 0
    index = tmp_path / "inspect" / "index.html"
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(index.as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "all => all.map(i => [i.getAttribute('src'), i.naturalWidth])")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(widths) >= 17  # PCA x4, attention x2, pairs, CKA x3 + sweep, ITM x2, the sweep's BLINK x2 + loss x3
    assert [src for src, width in widths if width <= 0] == []
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
