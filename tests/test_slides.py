"""Every notebook presents as a reveal.js deck that works offline.

The unit tests check the slide metadata conventions on every notebook in notebooks/ (new ones
included) and the rendering on small generated notebooks. The browser test builds the real decks
with ``python -m tlcourse slides``'s code, serves ``build/slides`` on 127.0.0.1 and opens each deck
in headless Chromium: no console errors, no request off 127.0.0.1, as many slides as the
metadata implies, and figures that are real images. Screenshots land in build/slides/screenshots/.
"""

from __future__ import annotations

import functools
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from headless_chromium import Chromium, open_chromium
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from tlcourse.courseware import slides
from tlcourse.courseware.course import notebooks
from tlcourse.paths import build_dir

NOTEBOOKS = notebooks()
PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def cell(kind: str, source: str, slide: str, *, figure: bool = False, tags: tuple[str, ...] = ()):
    """A notebook cell with a slide_type (and, for code, optionally a PNG output)."""
    c = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
    c.metadata["slideshow"] = {"slide_type": slide}
    if tags:
        c.metadata["tags"] = list(tags)
    if figure:
        c.outputs = [new_output("display_data", data={"image/png": PNG_1PX, "text/plain": "<Figure>"})]
    return c


def lesson(*extra) -> nbformat.NotebookNode:
    """A tiny lesson that follows every convention; ``extra`` cells go before the exercises."""
    return new_notebook(cells=[
        cell("md", "# 99 · Tiny\n\n**Learning objectives.** 1. one", "slide"),
        cell("code", 'PROFILE = "default"', "skip", tags=("parameters",)),
        cell("code", "import numpy", "skip"),
        cell("md", "## 1. A section", "slide"),
        cell("code", "plot()", "subslide", figure=True),
        cell("md", "The conclusion.", "fragment"),
        *extra,
        cell("md", "## Summary\n\n* one", "slide"),
        cell("md", "## Exercises\n\n1. a\n2. b\n3. c", "slide"),
        cell("code", "check('x', ...)", "skip"),
        cell("md", "<details><summary>Solution</summary>\n\nx\n</details>", "skip"),
    ])


# ---------------------------------------------------------------- conventions, on every notebook

@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_follows_the_slide_conventions(path: Path):
    problems = slides.slide_convention_problems(nbformat.read(path, as_version=4))
    assert problems == [], f"{path.name}: fix its slide metadata ({slides.__name__} lists the conventions)"


def test_a_lesson_that_follows_the_conventions_has_no_problems():
    assert slides.slide_convention_problems(lesson()) == []


@pytest.mark.parametrize("broken, expected", [
    (lambda nb: nb.cells[1].metadata.update(slideshow={"slide_type": "-"}), "parameters cell"),
    (lambda nb: nb.cells[2].metadata.update(slideshow={"slide_type": "-"}), "setup code"),
    (lambda nb: nb.cells[4].metadata.update(slideshow={"slide_type": "-"}), "shows a figure"),
    (lambda nb: nb.cells[5].metadata.update(slideshow={"slide_type": "-"}), "fragment"),
    (lambda nb: nb.cells[0].update(source="# Title only"), "learning objectives"),
    (lambda nb: nb.cells[-1].metadata.update(slideshow={"slide_type": "-"}), "exercise answer or solution"),
    (lambda nb: nb.cells[3].metadata.pop("slideshow"), "no slideshow metadata"),
])
def test_each_broken_convention_is_reported(broken, expected):
    nb = lesson()
    broken(nb)
    problems = slides.slide_convention_problems(nb)
    assert any(expected in p for p in problems), problems


def test_explicit_speaker_notes_may_be_long():
    notes = cell("md", "word " * 400, "notes")
    assert slides.slide_convention_problems(lesson(notes)) == []


def test_short_prose_stays_on_the_slide_whole():
    text = "## Heading\n\nOne short paragraph.\n\nAnother one."
    assert slides.split_long_prose(text) == (text, "")


def test_long_prose_keeps_structure_on_the_slide_and_moves_paragraphs_to_notes():
    filler = " ".join(["words"] * 60)
    text = (f"## Heading\n\nFirst paragraph {filler}.\n\nSecond paragraph {filler}.\n\n"
            f"The list below:\n\n* item one\n* item two\n\n```python\ncode()\n```\n\nLast paragraph {filler}.")
    shown, notes = slides.split_long_prose(text)
    assert shown == f"## Heading\n\nFirst paragraph {filler}.\n\nThe list below:\n\n* item one\n* item two\n\n```python\ncode()\n```"
    assert notes == f"Second paragraph {filler}.\n\nLast paragraph {filler}."


def test_the_deck_shows_long_prose_as_a_slide_plus_speaker_notes(tmp_path: Path):
    long_cell = cell("md", "## 2. Long\n\n" + "\n\n".join(f"Paragraph {i}. " + "word " * 50 for i in range(4)), "slide")
    source = tmp_path / "99_tiny.ipynb"
    nbformat.write(lesson(long_cell), source)
    plan = slides.slide_plan(nbformat.read(source, as_version=4))
    html = slides.render_deck(source, tmp_path / "deck.html").read_text()
    assert plan.notes == 1 and html.count('<aside class="notes">') == 1
    notes = html.split('<aside class="notes">')[1].split("</aside>")[0]
    assert "Paragraph 0" not in notes and "Paragraph 3" in notes


def test_slide_plan_counts_subslides_and_skips_hidden_cells():
    plan = slides.slide_plan(lesson(cell("code", "more()", "subslide", figure=True), cell("md", "aside", "notes")))
    # title | section (+ figure subslide + second figure subslide) | summary | exercises
    assert (plan.horizontal, plan.slides) == (4, 6)
    assert plan.figure_slides == [(1, 1), (1, 2)]
    assert plan.fragments == 1


def test_the_first_visible_cell_opens_the_deck_whatever_its_type():
    nb = new_notebook(cells=[cell("code", "x", "skip"), cell("md", "a", "-"), cell("md", "b", "subslide")])
    assert slides.slide_plan(nb).slides == 2


# ---------------------------------------------------------------- rendering, offline

def test_vendored_reveal_has_every_file_a_deck_loads(tmp_path: Path):
    folder = slides.vendor_reveal(tmp_path)
    for name in slides.REVEAL_FILES:
        assert (folder / name).stat().st_size > 0, name
    assert "MIT" in (folder / "LICENSE").read_text()


def test_a_deck_loads_nothing_from_the_internet(tmp_path: Path):
    source = tmp_path / "99_tiny.ipynb"
    nbformat.write(lesson(), source)
    html = slides.render_deck(source, tmp_path / "99_tiny.slides.html").read_text()
    loaded = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', html)
    assert loaded and all(url.startswith((slides.REVEAL_DIR + "/", "data:")) for url in loaded), loaded
    assert "import mermaid" not in html and "require(" not in html
    assert "Reveal.initialize" in html
    assert "data:image/png;base64," in html, "the executed figure is in the deck"
    assert "PROFILE" not in html, "the skipped parameters cell is not in the deck"


def test_build_slides_renders_the_selected_notebooks(tmp_path: Path):
    rows = slides.build_slides([NOTEBOOKS[0].stem[:2]], out=tmp_path)
    assert [r["notebook"] for r in rows] == [NOTEBOOKS[0].stem]
    assert (tmp_path / f"{NOTEBOOKS[0].stem}.slides.html").is_file()
    assert (tmp_path / "reveal.js" / "dist" / "reveal.js").is_file()
    with pytest.raises(ValueError, match="No notebook matches"):
        slides.build_slides(["no-such-lesson"], out=tmp_path)


# ---------------------------------------------------------------- in a real browser

@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    """One headless Chromium for every browser test in this module."""
    yield from open_chromium("the slides")


@pytest.fixture(scope="module")
def served_decks(course_decks: list[dict]) -> Iterator[tuple[str, dict[str, slides.SlidePlan]]]:
    """Every deck (built once per session: conftest's ``course_decks``), served on 127.0.0.1 (port 0)."""
    rows = course_decks
    out = Path(rows[0]["deck"]).parent
    plans = {Path(r["deck"]).name.split(".")[0]: slides.slide_plan(nbformat.read(p, as_version=4))
             for r, p in zip(rows, NOTEBOOKS)}

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", plans
    finally:
        server.shutdown()
        server.server_close()


FIGURE_STATE = """(() => {
  const slide = Reveal.getCurrentSlide();
  return Array.from(slide.querySelectorAll('img')).map(img => ({
    complete: img.complete, naturalWidth: img.naturalWidth,
    shownWidth: img.getBoundingClientRect().width }));
})()"""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_deck_opens_offline_in_chromium(path: Path, chromium: Chromium, served_decks):
    base, plans = served_decks
    plan = plans[path.stem]
    shots = build_dir() / "slides" / "screenshots"
    log = chromium.open(f"{base}/{path.stem}.slides.html")
    chromium.wait_for("typeof Reveal !== 'undefined' && Reveal.isReady()", timeout=20)
    chromium.evaluate("Reveal.configure({transition: 'none', backgroundTransition: 'none'})")

    assert chromium.evaluate("Reveal.getTotalSlides()") == plan.slides, "slides in the deck vs. the metadata"
    assert chromium.evaluate("Reveal.getHorizontalSlides().length") == plan.horizontal
    title = chromium.evaluate("Reveal.getCurrentSlide().querySelector('h1').textContent")
    assert title.strip("¶ ") == nbformat.read(path, as_version=4).cells[0].source.splitlines()[0].lstrip("# ")
    chromium.screenshot(shots / f"{path.stem}-title.png")

    assert plan.figure_slides, f"{path.name} has no figure outputs: commit it executed (make refresh)"
    for n, (h, v) in enumerate(plan.figure_slides):
        chromium.evaluate(f"Reveal.slide({h}, {v}); while (Reveal.nextFragment()) {{}}; true")
        images = chromium.wait_for(f"(() => {{ const s = {FIGURE_STATE}; "
                                   "return s.length && s.every(i => i.complete) && s; })()", timeout=10)
        assert any(i["naturalWidth"] > 0 and i["shownWidth"] > 0 for i in images), \
            f"figure slide {h}.{v} shows no image: {images}"
        if n == 0:
            chromium.drain(0.5)  # let the last fragment fade in
            chromium.screenshot(shots / f"{path.stem}-figure.png")

    notes = chromium.evaluate("document.querySelectorAll('.reveal .slides aside.notes').length")
    assert notes == plan.notes, "speaker notes in the deck vs. the metadata"

    chromium.drain(0.3)
    assert log.errors == [], "the deck logged errors in the browser"
    remote = [u for u in log.requests if not u.startswith((base, "data:", "about:", "blob:"))]
    assert remote == [], "the deck asked for something beyond 127.0.0.1"


def test_the_slides_command_builds_decks_and_prints_their_slide_counts(tmp_path: Path, capsys):
    from tlcourse.__main__ import main

    assert main(["slides", "--notebooks", NOTEBOOKS[0].stem[:2], "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    plan = slides.slide_plan(nbformat.read(NOTEBOOKS[0], as_version=4))
    assert re.search(rf"{NOTEBOOKS[0].stem}\s+{plan.slides}\s", out), out
    assert (tmp_path / f"{NOTEBOOKS[0].stem}.slides.html").is_file()


def test_without_reveal_the_slides_command_says_how_to_get_it(tmp_path: Path, monkeypatch, capsys):
    from tlcourse.__main__ import main

    monkeypatch.setattr(slides, "REVEAL_PACKAGES", {"no_such_package_here": "x"})
    monkeypatch.setattr(slides, "project_root", lambda: tmp_path)
    assert main(["slides", "--out", str(tmp_path)]) == 1
    assert "pyreveal" in capsys.readouterr().err
