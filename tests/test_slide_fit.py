"""Every slide of every deck fits the screen; each deck prints to a PDF handout; the speaker view works.

Unit tests check, on generated notebooks, how :func:`tlcourse.courseware.slides.presentable` moves what
would not fit (long logs, long tables, long code, crowded slides) to the speaker notes or onto
sub-slides. The browser tests open every real deck in one headless Chromium at 1280x720, visit each
slide with all its fragments shown and fail on any slide whose content is taller or wider than the
slide (reveal.js's 1280x800, from the template) or hides content in a scroll box; they print decks
to PDF and check one page per slide, with pages that are not blank.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from headless_chromium import Chromium, open_chromium
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from tlcourse.courseware import slide_layout, slides
from tlcourse.courseware.course import notebooks

NOTEBOOKS = notebooks()
LOG = "".join(f"epoch {i:3d}  loss 0.{i:04d}  val acc {50 + i % 40}.0%  " + "x" * (i % 7) * 20 + "\n" for i in range(200))
WIDE_ROW = "".join(f"<td>{'value ' * 6}{j}</td>" for j in range(9))
TABLE = ("<table><caption>A long and wide table</caption><thead><tr>" + "<th>column</th>" * 9 + "</tr></thead><tbody>"
         + "".join(f"<tr>{WIDE_ROW}</tr>" for _ in range(40)) + "</tbody></table>")
LONG_CODE = "\n".join(f"result_{i} = some_function(argument_{i}, another_argument={i}, flag=True)"
                      + ("\n" if i % 6 == 5 else "") for i in range(70))


def cell(kind: str, source: str, slide: str, outputs: list | None = None):
    c = new_markdown_cell(source) if kind == "md" else new_code_cell(source, outputs=outputs or [])
    c.metadata["slideshow"] = {"slide_type": slide}
    return c


def crowded_lesson() -> nbformat.NotebookNode:
    """A lesson whose every slide would overflow as written: a 200-line log, a 40-row table wider
    than the slide, a 70-line code cell, a very long list and a slide crowded with cells."""
    return new_notebook(cells=[
        cell("md", "# 98 · Crowded\n\n**Learning objectives.**\n\n" + "\n".join(f"{i}. objective {i} " + "word " * 25
                                                                                 for i in range(1, 16)), "slide"),
        cell("md", "## 1. A long log", "slide"),
        cell("code", "train()", "-", [new_output("stream", name="stdout", text=LOG)]),
        cell("md", "## 2. A long, wide table", "slide"),
        cell("code", "table()", "-", [new_output("execute_result", data={"text/html": TABLE, "text/plain": "<T>"},
                                                 execution_count=2)]),
        cell("md", "## 3. Long code", "slide"),
        cell("code", LONG_CODE, "-", [new_output("stream", name="stdout", text="done\n")]),
        cell("md", "## 4. A crowded slide", "slide"),
        *[cell("code", "\n".join(f"step_{k}_{i}()" for i in range(9)), "-" if k % 2 else "fragment",
               [new_output("stream", name="stdout", text="ok\n" * 6)]) for k in range(5)],
    ])


# ---------------------------------------------------------------- moving what does not fit

def test_a_long_log_shows_its_head_and_tail_and_the_notes_hold_all_of_it():
    shown, cut = slide_layout.shorten_text(LOG)
    assert cut and shown.startswith("epoch   0") and "epoch 199" in shown
    assert "more lines in the speaker notes" in shown
    assert slide_layout._visual_lines(shown) <= slide_layout.MAX_OUTPUT_LINES
    assert slide_layout.shorten_text("a\nb\n") == ("a\nb\n", False)
    nb = slides.presentable(crowded_lesson())
    notes = [c.source for c in nb.cells if slides.slide_type(c) == "notes"]
    assert any(LOG.strip() in n for n in notes), "the full log is in the speaker notes"


def test_a_progress_bar_counts_as_the_line_it_ends_as():
    assert slide_layout._as_printed("10%\r50%\r100%\nnext\n") == "100%\nnext\n"


def test_a_long_table_keeps_its_first_rows_and_says_where_the_rest_is():
    shown, left_out = slide_layout.shorten_table(TABLE)
    assert left_out == 40 - slide_layout.MAX_TABLE_ROWS
    assert len(re.findall(r"<tr>", shown)) == 1 + slide_layout.MAX_TABLE_ROWS  # header + kept rows
    assert f"{left_out} more rows in the speaker notes" in shown and 'colspan="9"' in shown
    assert slide_layout.shorten_table("<table><tbody><tr><td>1</td></tr></tbody></table>")[1] == 0


def test_long_code_continues_on_sub_slides_cut_between_statements():
    parts = slide_layout.split_code(LONG_CODE)
    assert len(parts) > 1 and all(slide_layout._visual_lines(p) <= slide_layout.MAX_CODE_LINES for p in parts)
    assert "\n".join(p for p in parts).split() == LONG_CODE.split(), "no line lost or repeated"
    assert all(not p.startswith("\n") for p in parts)
    assert slide_layout.split_code("x = 1") == ["x = 1"]


def test_a_list_too_long_for_a_slide_continues_under_its_heading():
    source = "## Exercises\n\n" + "\n".join(f"{i}. exercise " + "word " * 40 for i in range(1, 21))
    parts = slide_layout.split_markdown(source)
    assert len(parts) > 1 and all(p.startswith("## Exercises") for p in parts)
    assert parts[1].startswith("## Exercises (continued)")
    assert sum(len(re.findall(r"^\d+\. ", p, flags=re.M)) for p in parts) == 20


def test_the_deck_plan_counts_the_sub_slides_that_crowded_cells_need():
    nb = crowded_lesson()
    plan = slides.slide_plan(nb)
    assert plan.horizontal == 5
    assert plan.slides > plan.horizontal, "long code, the long list and the crowded slide continue below"
    shown = slides.presentable(nb)
    assert len(shown.cells) > len(nb.cells)
    assert nb.cells[6].source == LONG_CODE, "the notebook itself is left as it is"


# ---------------------------------------------------------------- in a real browser

@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    """One headless Chromium at the decks' viewport for every browser test in this module."""
    yield from open_chromium("the slides", width=slides.VIEWPORT[0], height=slides.VIEWPORT[1], timeout=60)


@pytest.fixture(scope="module")
def decks(tmp_path_factory, course_decks: list[dict]) -> dict[str, Path]:
    """Every course deck (built once per session: conftest's ``course_decks``) and the crowded lesson's deck."""
    out = tmp_path_factory.mktemp("slides")
    slides.vendor_reveal(out)
    source = out / "98_crowded.ipynb"
    nbformat.write(crowded_lesson(), source)
    built = {Path(r["deck"]).name.split(".")[0]: Path(r["deck"]) for r in course_decks}
    built["98_crowded"] = slides.render_deck(source, out / "98_crowded.slides.html")
    return built


def test_every_slide_fits_the_screen_with_all_fragments_shown(chromium: Chromium, decks: dict[str, Path]):
    problems, counted = [], {}
    for name, deck in decks.items():
        fits = slides.measure_deck(chromium, deck.as_uri())
        counted[name] = len(fits)
        problems += [f"{name} {f.describe()}" for f in fits if not f.fits]
    assert counted["98_crowded"] == slides.slide_plan(crowded_lesson()).slides
    assert all(n > 1 for n in counted.values()), counted
    assert problems == [], "slides cut off on a 1280x720 screen:\n" + "\n".join(problems)


def test_the_fit_check_fails_on_a_slide_that_overflows(chromium: Chromium, tmp_path: Path):
    source = tmp_path / "97_tall.ipynb"
    nbformat.write(crowded_lesson(), source)
    deck = slides.render_deck(source, tmp_path / "97_tall.slides.html")
    slides.vendor_reveal(tmp_path)
    html = deck.read_text()  # the same deck without the conversion's fixes: a raw 200-line log
    tall = "<pre>" + "line<br>" * 120 + "</pre>"
    deck.write_text(html.replace("<section>", "<section>" + tall, 2).replace("var MIN_ZOOM = 0.7", "var MIN_ZOOM = 1"))
    fits = slides.measure_deck(chromium, deck.as_uri())
    assert not fits[0].fits and fits[0].content_height > fits[0].height, fits[0]
    assert "outside it" in fits[0].describe()


def test_a_deck_prints_to_a_handout_with_one_page_per_slide(chromium: Chromium, decks: dict[str, Path],
                                                             tmp_path: Path):
    if not (shutil.which("pdfinfo") and shutil.which("pdftoppm")):
        pytest.skip("poppler-utils is not installed: `apt-get install poppler-utils` for pdfinfo and pdftoppm")
    from PIL import Image, ImageStat

    notebook_of = {p.stem: p for p in NOTEBOOKS} | {"98_crowded": decks["98_crowded"].with_name("98_crowded.ipynb")}
    count = {n: slides.slide_plan(nbformat.read(notebook_of[n], as_version=4)).slides for n in decks}
    name = min((n for n in decks if n != "98_crowded"), key=count.get)  # the shortest real deck: fast
    for deck_name in (name, "98_crowded"):
        [row] = slides.print_handouts([decks[deck_name]], browser=chromium)
        info = subprocess.run(["pdfinfo", row["pdf"]], capture_output=True, text=True, check=True).stdout
        pages = int(re.search(r"^Pages:\s+(\d+)", info, flags=re.M).group(1))
        assert row["pages"] == pages
        assert pages == row["slides"] == count[deck_name] > 1, f"{deck_name}: {pages} pages for {row['slides']} slides"
        for page in (1, pages // 2 + 1):
            prefix = tmp_path / f"{deck_name}-{page}"
            subprocess.run(["pdftoppm", "-f", str(page), "-l", str(page), "-r", "30", "-png", "-singlefile",
                            row["pdf"], str(prefix)], check=True)
            image = Image.open(f"{prefix}.png").convert("L")
            dark = sum(image.histogram()[:200]) / (image.width * image.height)
            assert ImageStat.Stat(image).stddev[0] > 5 and dark > 0.002, f"{deck_name} page {page} looks blank"


# ---------------------------------------------------------------- speaker notes

def test_the_speaker_view_plugin_ships_with_the_decks(decks: dict[str, Path]):
    folder = next(iter(decks.values())).parent / slides.REVEAL_DIR
    plugin = (folder / "plugin" / "notes" / "notes.js").read_text()
    assert "RevealNotes" in plugin and "speaker" in plugin.lower()
    for name, deck in decks.items():
        html = deck.read_text()
        assert f'src="{slides.REVEAL_DIR}/plugin/notes/notes.js"' in html, name
        assert re.search(r"plugins:\s*\[[^\]]*RevealNotes", html), f"{name} does not register the notes plugin"


def test_the_speaker_view_opens_offline_with_the_notes(chromium: Chromium, decks: dict[str, Path]):
    log = chromium.open(decks["98_crowded"].as_uri() + "#/1")  # the long log's slide: its notes hold the log
    chromium.wait_for("typeof Reveal !== 'undefined' && Reveal.isReady()", timeout=20)
    assert chromium.evaluate("document.querySelectorAll('aside.notes').length") == 2
    chromium.send("Runtime.evaluate", expression="Reveal.getPlugin('notes').open()", userGesture=True)
    notes = ""
    for _ in range(100):  # the speaker view loads the deck twice (current and upcoming slide), then shows the notes
        chromium.drain(0.1)
        try:
            notes = chromium.evaluate_in_window(
                "Speaker View", "(document.querySelector('.speaker-controls-notes') || {}).textContent || ''")
        except LookupError:
            continue
        if "epoch 199" in notes:
            break
    assert "epoch 199" in notes, f"the speaker view shows no notes for the log slide: {notes[:200]!r}"
    remote = [u for u in log.requests if not u.startswith(("file:", "data:", "about:", "blob:"))]
    assert remote == [], "the deck asked for something on the network"


def test_a_figure_stays_on_the_slide_of_the_statements_that_drew_it():
    code = "\n".join(f"helper_{i} = make({i})" for i in range(18)) + "\n\nfig = plot(helper_0)\nfig.savefig('x.png')"
    parts = slide_layout.split_code_for_outputs(code, output_lines=slide_layout.IMAGE_LINES)
    assert parts[-1] == "fig = plot(helper_0)\nfig.savefig('x.png')", parts
    assert "\n".join(parts).split() == code.split()
    assert slide_layout.split_code_for_outputs(code, output_lines=2) == [code], "room for both: one slide"


def test_the_slides_command_measures_the_decks_with_check(chromium: Chromium, tmp_path: Path, capsys):
    from tlcourse.__main__ import main

    assert main(["slides", "--notebooks", NOTEBOOKS[-1].stem[:2], "--out", str(tmp_path), "--check"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{NOTEBOOKS[-1].stem}\s+\d+\s+0\s+\d+\s+\d\.\d\d", out), out
