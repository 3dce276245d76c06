"""The course website (``make site``, docs/site.py): built offline from the committed notebooks,
checked page by page in headless Chromium, every internal link resolved.

The site is built once per module into a temporary folder (about 20 s); the screenshots of the
home page and of one lesson go to ``build/site-screenshots/``, outside the repository's files.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest
from headless_chromium import Chromium, open_chromium

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "build" / "site-screenshots"
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")


def _site_module():
    spec = importlib.util.spec_from_file_location("tlcourse_site", ROOT / "docs" / "site.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tlcourse_site"] = module
    spec.loader.exec_module(module)
    return module


site_py = _site_module()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    start = time.monotonic()
    code = site_py.main(["--out", str(out / "html"), "--src", str(out / "src")])
    assert code == 0, "sphinx-build failed (warnings are errors): see the log above"
    print(f"site built in {time.monotonic() - start:.1f} s")
    return out / "html"


@pytest.fixture(scope="module")
def browser():
    yield from open_chromium("the documentation site")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.resources: list[str] = []  # what the page loads: scripts, images, stylesheets
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if value and (name == "href" and tag in ("a", "link") or name == "src" and tag in ("img", "script")):
                self.links.append(value)
                if tag != "a":
                    self.resources.append(value)


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def test_the_site_has_every_lesson_and_the_pages_the_course_promises(site: Path) -> None:
    pages = {p.relative_to(site).as_posix() for p in site_py.site_pages(site)}
    lessons = {f"lessons/{p.stem}.html" for p in site_py.lesson_notebooks()}
    assert len(lessons) == 6 and lessons <= pages
    assert {"index.html", "findings.html", "performance.html", "search.html"} <= pages
    for stem in (p.stem for p in site_py.lesson_notebooks()):
        assert (site / "slides" / f"{stem}.slides.html").is_file()
        assert f'href="../slides/{stem}.slides.html"' in (site / "lessons" / f"{stem}.html").read_text()


def test_performance_and_findings_tables_come_from_the_committed_result_files(site: Path) -> None:
    bf16 = json.loads((ROOT / "tlcourse/experiments/results/bf16_parity.json").read_text())
    performance = (site / "performance.html").read_text()
    for summary in bf16["summary"].values():
        assert summary["verdict_over_seeds"] in performance
    findings = (site / "findings.html").read_text()
    reference = json.loads((ROOT / "tlcourse/experiments/results/04_decision_matrix_reference.json").read_text())
    assert reference["meta"]["written"] in findings
    assert findings.count("the textbook") >= 4 and "large &amp; similar (3 seeds)" in findings
    from tlcourse.experiments.findings import all_findings

    assert all(f"<code class=\"docutils literal notranslate\"><span class=\"pre\">{fid}</span></code>" in findings
               or fid in findings for fid in all_findings()), "the findings page lists every finding by id"


def test_widgets_say_they_need_a_kernel_instead_of_showing_their_repr(site: Path) -> None:
    for notebook in site_py.lesson_notebooks():
        nb = nbformat.read(notebook, as_version=4)
        widgets = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if site_py.WIDGET_VIEW in o.get("data", {}))
        page = (site / "lessons" / f"{notebook.stem}.html").read_text()
        assert "VBox(children=" not in page and page.count(site_py.WIDGET_NOTE) == widgets, notebook.stem


def test_every_internal_link_resolves(site: Path) -> None:
    broken = []
    pages = site_py.site_pages(site)
    parsed = {page: _parse(page) for page in pages}
    for page, links in parsed.items():
        for link in links.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith(("mailto:", "javascript:", "//")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if not target.is_file():
                broken.append(f"{page.relative_to(site)} -> {link}")
            elif parts.fragment and target.suffix == ".html" and target in parsed:
                if parts.fragment not in parsed[target].ids:
                    broken.append(f"{page.relative_to(site)} -> {link} (no such anchor)")
    assert broken == []
    # and no page loads anything from the network: the site works offline
    remote = {link for links in parsed.values() for link in links.resources if urlsplit(link).scheme or
              link.startswith("//")}
    assert remote == set()


def test_every_page_loads_without_console_errors_and_offline(site: Path, browser: Chromium) -> None:
    problems = {}
    for page in site_py.site_pages(site):
        log = browser.open(page.as_uri())
        browser.drain(0.3)
        remote = [u for u in log.requests if not u.startswith(("file:", "data:", "blob:", "about:"))]
        if log.errors or remote:
            problems[page.relative_to(site).as_posix()] = log.errors + [f"remote request: {u}" for u in remote]
    assert problems == {}


def test_every_figure_of_every_lesson_is_shown(site: Path, browser: Chromium) -> None:
    for notebook in site_py.lesson_notebooks():
        nb = nbformat.read(notebook, as_version=4)
        figures = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if any(m in o.get("data", {}) for m in IMAGE_MIMES))
        browser.open((site / "lessons" / f"{notebook.stem}.html").as_uri())
        shown = browser.wait_for(
            "Array.from(document.querySelectorAll('.cell_output img')).every(i => i.complete) && "
            "Array.from(document.querySelectorAll('.cell_output img')).map(i => i.naturalWidth)")
        assert len(shown) == figures > 0 and min(shown) > 0, notebook.stem


def test_search_finds_the_lessons(site: Path, browser: Chromium) -> None:
    browser.open((site / "search.html").as_uri() + "?q=fine-tuning")
    titles = browser.wait_for("document.querySelectorAll('#search-results li').length > 0 && "
                              "Array.from(document.querySelectorAll('#search-results li a')).map(a => a.href)",
                              timeout=30)
    assert any("/lessons/02_fine_tuning.html" in t for t in titles), titles
    browser.drain(1.0)  # a search that fetches pages fails on file:// URLs, late
    assert browser.log.errors == []


def test_screenshots_of_the_home_page_and_a_lesson(site: Path, browser: Chromium) -> None:
    shots = []
    for name, page in (("home", site / "index.html"), ("lesson-02", site / "lessons" / "02_fine_tuning.html")):
        log = browser.open(page.as_uri())
        assert browser.evaluate("document.title") and log.errors == []
        shots.append(browser.screenshot(SCREENSHOTS / f"{name}.png"))
    assert all(s.stat().st_size > 10_000 for s in shots)


def test_the_home_page_lists_each_lesson_with_its_run_time_and_slides(site: Path) -> None:
    home = (site / "index.html").read_text()
    for notebook in site_py.lesson_notebooks():
        seconds = nbformat.read(notebook, as_version=4).metadata["papermill"]["duration"]
        row = re.search(rf'<tr[^>]*>(?:(?!</tr>).)*lessons/{notebook.stem}\.html(?:(?!</tr>).)*</tr>', home, re.S)
        assert row, notebook.stem
        assert f"{seconds / 60:.0f} min" in row.group(0) and f"slides/{notebook.stem}.slides.html" in row.group(0)
