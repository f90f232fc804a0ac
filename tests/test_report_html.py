"""report.html of the tiny DAG opened in a real headless Chromium (Debian's `chromium`, driven by
playwright): every section and figure renders, nothing reaches the network or the console's
error log, the leaderboard's numbers are leaderboard.csv's, and its columns sort. Also: the
figures are PNG files for papers, and `snakemake --report` packs page, figures and leaderboard.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import polars as pl
import pytest

from axflow.config import compose
from axflow.layout import judge_validity_record
from axflow.report.html import SECTIONS
from dag import run_args, snakemake

pytestmark = pytest.mark.slow  # runs the whole tiny DAG: make test's second step

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when it is missing and we are root (`make test`
    installs it before pytest starts, so this costs the suite nothing there)."""
    if not CHROMIUM.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False)
    if not CHROMIUM.exists():
        pytest.skip(
            f"no {CHROMIUM}, and `apt-get install chromium` could not install it (needs root "
            "and Debian's package index): the browser test needs Debian's chromium"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def browser_page(tiny_run, chromium, tmp_path_factory):
    """The tiny run's report.html loaded in headless Chromium, with what it logged and fetched."""
    from playwright.sync_api import sync_playwright

    events: dict[str, list[str]] = {"errors": [], "requests": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on(
            "console",
            lambda m: events["errors"].append(m.text) if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: events["errors"].append(str(e)))
        page.on("request", lambda r: events["requests"].append(r.url))
        page.goto((tiny_run / "tiny" / "report.html").as_uri(), wait_until="load")
        yield page, events, tmp_path_factory.mktemp("report_html")
        browser.close()


def test_every_section_and_figure_renders_without_errors(browser_page, tiny_run, capsys):
    page, events, tmp = browser_page
    for section, title in SECTIONS:
        box = page.locator(f"section#{section}").bounding_box()
        assert box and box["height"] > 40, f"section {section} did not render"
        assert page.locator(f"section#{section} h2").inner_text() == title
        text = page.locator(f"section#{section}").inner_text()
        assert len(text) > len(title) + 40, f"section {section} is empty: {text!r}"
    body = page.locator("body").inner_text()
    for leak in ("built-in method", " object at 0x", "Undefined"):  # a template reading a bad key
        assert leak not in body, leak
    images = page.eval_on_selector_all(
        "figure.fig img", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth])"
    )
    svgs = page.eval_on_selector_all(
        "figure.svg-fig svg",
        "ss => ss.map(s => [s.getBoundingClientRect().width, s.querySelectorAll('path').length])",
    )
    for alt, complete, width in images:
        assert complete and width > 0, f"figure {alt!r} did not render"
    assert all(width > 0 and paths > 10 for width, paths in svgs), svgs
    # Every figure written for papers is on the page: ROC curves as SVG, the rest as images.
    pngs = sorted(p.name for p in (tiny_run / "tiny" / "figures").glob("*.png"))
    rocs = [p for p in pngs if p.startswith("roc_")]
    assert rocs == ["roc_bow.png", "roc_diffmean.png", "roc_prompt.png", "roc_random.png"]
    assert {"factor_diffmean.png", "factor_random.png", "tradeoff.png", "winrate.png"} <= set(pngs)
    assert "factor_prompt.png" not in pngs  # prompting ignores the factor
    assert len(svgs) == len(rocs) and len(images) == len(pngs) - len(rocs)
    record = judge_validity_record(compose(run_args(tiny_run)))
    judge = page.locator("section#judge").inner_text()
    if record.exists():
        assert "judge_validity.png" in pngs and "Validity on AxBench" in judge
    else:
        assert "No validity measurement" in judge and "bench/judge_validity.py" in judge
    assert events["errors"] == [], events["errors"]
    assert all(u.startswith(("file:", "data:")) for u in events["requests"]), events["requests"]
    shot = tmp / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nreport.html screenshot: {shot}")


def _number(text: str) -> float:
    return float(text.rstrip("%"))


def test_leaderboard_numbers_equal_leaderboard_csv(browser_page, tiny_run):
    page, _, _ = browser_page
    csv = pl.read_csv(tiny_run / "tiny" / "leaderboard.csv", infer_schema=False)
    shown = page.eval_on_selector_all(
        "#leaderboard-table tbody tr",
        "trs => trs.map(tr => Array.from(tr.cells).map(td => [td.dataset.col, td.className,"
        " td.textContent.trim()]))",
    )
    assert len(shown) == csv.height
    columns = set()
    for cells in shown:
        row = {col: (kind, text) for col, kind, text in cells}
        (expected,) = csv.filter(pl.col("method") == row["method"][1]).iter_rows(named=True)
        for col, (kind, text) in row.items():
            columns.add(col)
            value = expected[col]
            if value is None:
                assert text == "–", (row["method"], col, text)
                continue
            head, _, interval = text.partition(" [")
            if kind == "text":
                assert head == value, (col, head, value)
                continue
            assert _number(head) == float(value), (row["method"], col, head, value)
            if kind == "ci" and expected.get(f"{col}_lo") is not None:
                lo, hi = interval.rstrip("]").split(", ")
                assert float(lo) == float(expected[f"{col}_lo"])
                assert float(hi) == float(expected[f"{col}_hi"])
                columns |= {f"{col}_lo", f"{col}_hi"}
    assert set(csv.columns) <= columns, set(csv.columns) - columns


def test_leaderboard_columns_sort_on_click(browser_page):
    page, _, _ = browser_page

    def column(col: str) -> list[str]:
        return page.eval_on_selector_all(
            f"#leaderboard-table tbody td[data-col='{col}']", "tds => tds.map(t => t.dataset.value)"
        )

    before = column("method")
    orders = []
    for col, first in (("detection_auroc", "descending"), ("method", "ascending")):
        header = page.locator(f"#leaderboard-table th[data-col='{col}']")
        for order in (first, "ascending" if first == "descending" else "descending"):
            header.click()
            assert header.get_attribute("aria-sort") == order
            values = [v for v in column(col) if v != ""]  # missing values sort last
            keyed = [float(v) for v in values] if col != "method" else values
            assert keyed == sorted(keyed, reverse=order == "descending"), (col, order, values)
            orders.append(column("method"))
    assert any(o != before for o in orders)  # clicking reordered the rows


def test_roc_picker_shows_one_concept(browser_page):
    page, _, _ = browser_page
    ids = page.eval_on_selector_all("#roc svg g[id^='roc-']", "gs => gs.map(g => g.id)")
    concept = ids[0].rsplit("-c", 1)[1]
    page.select_option("#roc-concept", concept)
    visible = page.eval_on_selector_all(
        "#roc svg g[id^='roc-']",
        "gs => gs.filter(g => getComputedStyle(g).display !== 'none').map(g => g.id)",
    )
    assert visible and all(v.endswith(f"-c{concept}") for v in visible)
    page.select_option("#roc-concept", "all")
    shown = page.eval_on_selector_all(
        "#roc svg g[id^='roc-']", "gs => gs.filter(g => g.style.display !== 'none').length"
    )
    assert shown == len(ids)


def test_drilldown_shows_generations_at_the_chosen_factor(browser_page, tiny_run):
    page, _, _ = browser_page
    concepts = page.locator("details.concept")
    assert concepts.count() == 3
    concepts.first.locator("summary").click()
    samples = concepts.first.locator(".sample blockquote")
    assert samples.count() >= 2 and samples.first.is_visible()
    assert samples.first.inner_text().strip()


def test_snakemake_report_packs_page_figures_and_leaderboard(tiny_run, tmp_path):
    out = tmp_path / "report.zip"
    proc = snakemake("--report", str(out), overrides=run_args(tiny_run))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    archive = zipfile.ZipFile(out)
    names = archive.namelist()
    figures = {Path(n).name for n in names if n.endswith(".png")}
    written = {p.name for p in (tiny_run / "tiny" / "figures").glob("*.png")}
    assert figures == written
    data = [Path(n).name for n in names if "/data/raw/" in n]
    assert "report.html" in data and "leaderboard.csv" in data
    index = archive.read(next(n for n in names if n.endswith("/report.html") and "/data/" not in n))
    for category in ("Report page", "Leaderboard", "Figures"):
        assert category.encode() in index
