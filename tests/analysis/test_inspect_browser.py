"""`inspect` writes a report (with training curves, evaluation tables and a sweep's section) that a real headless
browser opens at desktop width as a page: nothing wider than the window, every image loaded and at most ~1000 px
wide, no console error, no text under 11 px, a banner for the tiny random models and a provenance header per
section; its tables rounded for reading (the evaluation tables exactly as `just eval-table` wrote them), and
every figure there as PNG and PDF."""
import csv
import os
import re
from pathlib import Path

import pytest

from analysis.cli import main

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WIDTH = 1280
MIN_TEXT_PX = 11
MAX_FIGURE_PX = 1000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                                reason="Debian's chromium is not installed (CI installs it and runs this test)")

# [text, tag, font size] of every visible text node under MIN_TEXT_PX
SMALL_TEXT = """min => {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT), small = [];
  while (walker.nextNode()) {
    const node = walker.currentNode, element = node.parentElement, style = getComputedStyle(element);
    if (!node.textContent.trim() || style.visibility === 'hidden' || !element.getClientRects().length) continue;
    if (parseFloat(style.fontSize) < min) small.push([node.textContent.trim(), element.tagName, style.fontSize]);
  }
  return small;
}"""


def csv_rows(path):
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def shown_table(page: str, caption: str) -> list[list[str]]:
    """The header and body cells of the report's table with this caption."""
    table = re.search(rf"<caption>{re.escape(caption)}</caption>(.*?)</table>", page, re.S)[1]
    return [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]


def test_report_reads_as_a_page_at_desktop_width(analysis_env, sweep_report, trained_runs, tmp_path):
    from playwright.sync_api import sync_playwright

    env = analysis_env
    assert main(["inspect", "--extract-config", str(env.extract_yaml), "--out", str(tmp_path), "--device", "cpu",
                 "--data", str(env.data_json), "--image-root", str(env.image_root), "--keys", *env.keys[:3],
                 "--timesteps", "389", "--mmvp-vlm", str(env.mmvp_vlm), "--winoground", str(env.winoground),
                 "--clip-config", str(env.clip_yaml), "--sweeps", str(sweep_report),
                 "--runs", *map(str, trained_runs.runs), "--eval-table", str(trained_runs.eval_table)]) == 0
    report = tmp_path / "inspect"
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto((report / "index.html").as_uri(), wait_until="load")
            widths = page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
            images = page.eval_on_selector_all("img", "all => all.map(i => [i.getAttribute('src'), i.complete, "
                                                      "i.naturalWidth, i.getBoundingClientRect().width])")
            small = page.evaluate(SMALL_TEXT, MIN_TEXT_PX)
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert widths[0] <= widths[1] == WIDTH  # no horizontal scrolling
    assert len(images) >= 18  # training x2, PCA x4, attention x2, pairs, CKA x2, ITM x2, the sweep's BLINK x2 + loss x3
    assert [src for src, complete, natural, _ in images if not complete or natural <= 0] == []
    assert [src for src, *_, shown in images if shown > MAX_FIGURE_PX] == []
    assert errors == [] and small == []
    for src, *_ in images:  # every figure for a paper too
        assert (report / src).with_suffix(".pdf").stat().st_size > 1000, src
    assert (tmp_path / "report.png").stat().st_size > 10_000

    page = (report / "index.html").read_text(encoding="utf-8")
    sections = dict(re.findall(r"<h2 id='s\d+'>([^<]*)</h2>(.*?)(?=<h2 |</body>)", page, re.S))
    assert len(sections) == 8 and all("<dl class='prov'>" in body for title, body in sections.items()
                                      if not title.startswith("Sweep"))  # the sweep's runs are not here
    banner = re.search(r"<div class='banner'>(.*?)</div>", page, re.S)[1]
    assert {"embedded:tiny-sd", "embedded:tiny-llm", "embedded:tiny-clip-vision"} <= set(
        re.findall(r"<code>([^<]+)</code>", banner))
    for prefix in (trained_runs.eval_table, trained_runs.eval_table.with_name("eval-table-again")):
        written = csv_rows(prefix.with_suffix(".csv"))
        assert shown_table(page, prefix.with_suffix(".csv").name) == written  # header and cells as written
    itm = shown_table(page, "mmvp-vlm: accuracy in % (mmvp-vlm.csv)")
    recorded = csv_rows(report / "itm" / "mmvp-vlm.csv")
    assert itm[0] == recorded[0] and [r[0] for r in itm] == [r[0] for r in recorded]
    assert [c for r in itm[1:] for c in r[1:]] == [f"{float(c):.1f}" for r in recorded[1:] for c in r[1:]]
    training = shown_table(page, "per run, over its optimizer steps (training.csv)")
    assert [(r[0], r[1]) for r in training[1:]] == [(str(run), str(n)) for run, n in zip(trained_runs.runs,
                                                                                         trained_runs.steps)]
    assert [r[3] for r in training[1:]] == ["1.50", "1.33"]  # last loss 1 + 3/steps, 3 significant digits
    as_written = {cell.lstrip("-") for prefix in (trained_runs.eval_table, trained_runs.eval_table.with_name(
        "eval-table-again")) for row in csv_rows(prefix.with_suffix(".csv")) for cell in row}  # eval-table's own
    decimals = [d for d in re.findall(r"<td>-?(\d+\.\d+)</td>", page) if d not in as_written]
    assert decimals and max(len(d.replace(".", "").lstrip("0")) for d in decimals) <= 4  # was 11.1111, 0.985416
