"""Instructor slides: every notebook as a reveal.js deck that works without internet.

``python -m tlcourse slides`` (and ``make slides``) calls :func:`build_slides`. It renders each
notebook in ``notebooks/`` (committed notebooks carry the outputs of a real run, so the decks show
figures and tables) to ``build/slides/<notebook>.slides.html``, and copies reveal.js into
``build/slides/reveal.js/`` from the PyPI package ``pyreveal`` (MIT, it bundles reveal.js), so
the decks load nothing from a CDN. Open a deck in a browser (speaker notes: press ``s``), or
serve the folder: ``python -m http.server -d build/slides``.

The slide metadata conventions every notebook follows (checked by
:func:`slide_convention_problems`, which tests/test_slides.py runs on every notebook):

- the first cell is the title and learning objectives, on the first slide;
- the ``parameters`` cell and the setup code before the first ``## `` section are ``skip``;
- a cell whose output is a figure starts a ``slide`` or ``subslide``, so the figure gets the screen;
- a deck uses ``fragment`` for at least one reveal;
- speaker notes: a markdown cell with ``slide_type: notes`` goes to the speaker view (press ``s``).
  Long prose needs no extra work: when a markdown cell holds more than :data:`MAX_SLIDE_WORDS`
  words, the deck keeps its headings, lists, code, tables and first paragraph on the slide and
  moves the other paragraphs into the speaker notes (:func:`split_long_prose`); learners still
  read the whole cell in the notebook;
- the exercises' answer cells and solutions are ``skip``: a deck ends on the exercise list.

Every slide fits the screen, whatever outputs the notebooks carry (:func:`presentable`): long logs
and printed results show their first and last lines and long tables their first rows, with the
whole text in the speaker notes; long code continues on sub-slides; a crowded slide continues on a
sub-slide; the template wraps code and output and shrinks a slide still slightly too big.
:func:`measure_deck` measures every slide in headless Chromium (tests/test_slide_fit.py), and
``python -m tlcourse slides --pdf`` prints each deck to a PDF handout (:func:`print_handouts`).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any, Sequence

from tlcourse.courseware.course import notebooks
from tlcourse.courseware.handouts import (
    FIT_TOLERANCE,
    VIEWPORT,
    SlideFit,
    check_fit,
    measure_deck,
    pdf_page_count,
    print_handouts,
)
from tlcourse.courseware.slide_layout import (
    IMAGE_MIMES,
    MAX_SLIDE_WORDS,
    SlidePlan,
    exercises_start,
    has_figure,
    presentable,
    slide_convention_problems,
    slide_plan,
    slide_type,
    split_long_prose,
)
from tlcourse.paths import build_dir, project_root

__all__ = ["FIT_TOLERANCE", "IMAGE_MIMES", "MAX_SLIDE_WORDS", "REVEAL_DIR", "REVEAL_FILES", "REVEAL_PACKAGES",
           "TEMPLATE", "VIEWPORT", "RevealNotFoundError", "SlideFit", "SlidePlan", "build_slides", "check_fit",
           "deck_path", "exercises_start", "has_figure", "measure_deck", "pdf_page_count", "presentable",
           "print_handouts", "render_deck", "reveal_source", "slide_convention_problems", "slide_plan", "slide_type",
           "split_long_prose", "vendor_reveal"]

#: Where the decks find reveal.js, relative to the deck (the copy made by :func:`vendor_reveal`).
REVEAL_DIR = "reveal.js"
#: The files a deck loads from reveal.js, in the layout nbconvert's reveal template expects.
REVEAL_FILES = {
    "dist/reveal.js": ["dist/reveal.js"],
    "dist/reveal.css": ["dist/reveal.css"],
    "dist/theme/white.css": ["dist/theme/white.css"],
    "dist/theme/simple.css": ["dist/theme/simple.css"],
    # reveal.js 4/5 keep the notes plugin in plugin/notes/, reveal.js 6 in dist/plugin/
    "plugin/notes/notes.js": ["plugin/notes/notes.js", "dist/plugin/notes.js"],
    "LICENSE": ["LICENSE"],
}
#: Python packages that ship a reveal.js build, with the folder inside the package that holds it.
REVEAL_PACKAGES = {"pyreveal": "revealjs", "sphinx_revealjs": "_static/revealjs"}
TEMPLATE = Path(__file__).parent / "templates" / "slides.html.j2"


class RevealNotFoundError(FileNotFoundError):
    """No local reveal.js: the decks would have to load it from the internet."""


def reveal_source() -> Path:
    """The folder of an installed reveal.js build (``pyreveal``, a course dependency, first)."""
    for package, inner in REVEAL_PACKAGES.items():
        spec = importlib.util.find_spec(package)  # finds the files without importing the package
        for location in (spec.submodule_search_locations or []) if spec else []:
            folder = Path(location) / inner
            if (folder / "dist" / "reveal.js").is_file():
                return folder
    node = project_root() / "node_modules" / "reveal.js"  # `npm install reveal.js` works too
    if (node / "dist" / "reveal.js").is_file():
        return node
    raise RevealNotFoundError(
        "reveal.js is not installed, so the decks cannot work offline. Install the course's "
        "dependencies (`pip install -e .` brings the PyPI package pyreveal, which ships reveal.js), "
        "or run `npm install reveal.js` in the project folder."
    )


def vendor_reveal(dest: Path) -> Path:
    """Copy the reveal.js files the decks load into ``dest/reveal.js``; returns that folder."""
    source = reveal_source()
    target = dest / REVEAL_DIR
    for name, candidates in REVEAL_FILES.items():
        found = next((source / c for c in candidates if (source / c).is_file()), None)
        if found is None:
            raise RevealNotFoundError(f"{source} has no {' or '.join(candidates)}: an unexpected reveal.js layout")
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found, target / name)
    # the themes' web fonts, referenced relative to dist/theme/
    fonts = source / "dist" / "theme" / "fonts"
    if fonts.is_dir():
        shutil.copytree(fonts, target / "dist" / "theme" / "fonts", dirs_exist_ok=True)
    return target


# ---------------------------------------------------------------- rendering

def render_deck(notebook: Path, output: Path, *, reveal_prefix: str = REVEAL_DIR) -> Path:
    """Render one (executed) notebook to a reveal.js deck that loads reveal.js from ``reveal_prefix``."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import SlidesExporter

    exporter = SlidesExporter(
        extra_loaders=[DictLoader({"tlcourse_slides.html.j2": TEMPLATE.read_text(encoding="utf-8")})],
        template_file="tlcourse_slides.html.j2",
        reveal_url_prefix=reveal_prefix,
        reveal_theme="white",
        reveal_number="c/t",
        reveal_width="1280",
        reveal_height="800",
    )
    nb = presentable(nbformat.read(notebook, as_version=4))
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(body, encoding="utf-8")
    return output


def deck_path(notebook: Path, out: Path | None = None) -> Path:
    """Where the deck of ``notebook`` lands (``build/slides/<stem>.slides.html``)."""
    return (out or build_dir() / "slides") / f"{notebook.stem}.slides.html"


def build_slides(
    selected: Sequence[str] | None = None, *, out: Path | None = None, source: Path | None = None
) -> list[dict[str, Any]]:
    """Render the selected notebooks (all by default) to decks in ``out`` (``build/slides``).

    ``source`` is the folder of executed notebooks to render, ``notebooks/`` by default (its
    notebooks carry committed outputs); ``build/notebooks`` after ``make course`` works too.
    Returns one row per deck: notebook, deck path, slide count, figure slides.
    """
    import nbformat

    out = out or build_dir() / "slides"
    paths = notebooks(source)
    if selected:
        paths = [p for p in paths if any(s in p.stem for s in selected)]
        if not paths:
            raise ValueError(f"No notebook matches {list(selected)}; the notebooks are {[p.stem for p in notebooks(source)]}")
    vendor_reveal(out)
    rows = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        plan = slide_plan(nb)
        deck = render_deck(path, deck_path(path, out))
        rows.append({"notebook": path.stem, "deck": str(deck), "slides": plan.slides,
                     "figure_slides": len(plan.figure_slides), "fragments": plan.fragments, "notes": plan.notes,
                     "executed": all(c.get("execution_count") for c in nb.cells
                                     if c.cell_type == "code" and c.source.strip())})
    return rows
