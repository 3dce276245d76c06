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
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tlcourse.courseware.course import notebooks
from tlcourse.paths import build_dir, project_root

#: Words of markdown one slide holds comfortably; past this, supporting paragraphs become speaker notes.
MAX_SLIDE_WORDS = 120
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
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")


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


# ---------------------------------------------------------------- what the metadata implies

def slide_type(cell: Any) -> str:
    """The cell's reveal.js role: slide, subslide, fragment, skip, notes, or '-' (continue)."""
    return (cell.get("metadata", {}).get("slideshow") or {}).get("slide_type", "-") or "-"


def has_figure(cell: Any) -> bool:
    """True when a code cell's outputs include an image."""
    return cell.get("cell_type") == "code" and any(
        mime in output.get("data", {}) for output in cell.get("outputs", []) for mime in IMAGE_MIMES
    )


def _blocks(markdown: str) -> list[str]:
    """Markdown split at blank lines, keeping fenced code blocks whole."""
    blocks: list[str] = []
    current: list[str] = []
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not line.strip() and not fenced:
            if current:
                blocks.append("\n".join(current))
                current = []
            continue
        current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def _is_structure(block: str) -> bool:
    """Headings, lists, code, tables, HTML and indented continuations stay on the slide."""
    first = block.splitlines()[0]
    return bool(re.match(r"(#|```|\||<|\s|[-*+]\s|\d+[.)]\s)", first))


def split_long_prose(markdown: str, budget: int = 0) -> tuple[str, str]:
    """(what the slide shows, what goes to the speaker notes) for one markdown cell.

    Within ``budget`` words (default :data:`MAX_SLIDE_WORDS`) everything stays on the slide.
    Past it, the slide keeps the structure (headings, lists, code, tables), the first paragraph
    and each paragraph that leads into a list; the other paragraphs move to the notes, in order.
    """
    budget = budget or MAX_SLIDE_WORDS
    if _words(markdown) <= budget:
        return markdown, ""
    blocks = _blocks(markdown)
    shown, notes, first_paragraph_seen = [], [], False
    for i, block in enumerate(blocks):
        leads_into_list = i + 1 < len(blocks) and re.match(r"\s*([-*+]|\d+[.)])\s", blocks[i + 1])
        if _is_structure(block) or leads_into_list or not first_paragraph_seen:
            shown.append(block)
            first_paragraph_seen = first_paragraph_seen or not _is_structure(block)
        else:
            notes.append(block)
    return "\n\n".join(shown), "\n\n".join(notes)


def presentable(nb: Any) -> Any:
    """A copy of the notebook as the deck shows it: long prose split into slide + speaker notes."""
    import copy

    from nbformat.v4 import new_markdown_cell

    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type == "markdown" and slide_type(cell) not in ("skip", "notes"):
            shown, notes = split_long_prose(cell.source)
            if notes:
                cell.source = shown
                note = new_markdown_cell(notes)
                note.metadata["slideshow"] = {"slide_type": "notes"}
                cells.append(note)
    nb.cells = cells
    return nb


@dataclass(frozen=True)
class SlidePlan:
    """What a notebook's slide metadata implies for its deck."""

    slides: int  # reveal.js slides, counting each subslide (what Reveal.getTotalSlides() reports)
    horizontal: int  # top-level slides
    figure_slides: list[tuple[int, int]]  # (h, v) indices of the slides that show a figure
    fragments: int
    notes: int  # speaker-notes cells, including those split off long prose


def slide_plan(nb: Any) -> SlidePlan:
    """Follow nbconvert's rules: the first visible cell opens slide 0; 'slide' starts a new
    horizontal slide, 'subslide' a new vertical one below it; skipped cells are dropped and
    notes go to the speaker view."""
    h, v, started = -1, 0, False
    slides, fragments, notes, figures = 0, 0, 0, []
    for cell in presentable(nb).cells:
        kind = slide_type(cell)
        notes += kind == "notes"
        if kind in ("skip", "notes"):
            continue
        if not started or kind == "slide":
            h, v, started = h + 1, 0, True
            slides += 1
        elif kind == "subslide":
            v += 1
            slides += 1
        elif kind == "fragment":
            fragments += 1
        if has_figure(cell) and (h, v) not in figures:
            figures.append((h, v))
    return SlidePlan(slides=slides, horizontal=h + 1, figure_slides=figures, fragments=fragments, notes=notes)


def _words(markdown: str) -> int:
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)  # code blocks are not prose
    text = re.sub(r"<[^>]+>", " ", text)
    return len(re.findall(r"[A-Za-z0-9]+", text))


def _section_start(cells: Sequence[Any]) -> int:
    """Index of the first '## ' section heading (the end of the title and setup part)."""
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown" and re.search(r"^##\s", cell.source, flags=re.M):
            return i
    return len(cells)


def exercises_start(cells: Sequence[Any]) -> int | None:
    """Index of the markdown cell that opens the closing '## Exercises' section, if any."""
    for i in range(len(cells) - 1, -1, -1):
        cell = cells[i]
        if cell.cell_type == "markdown" and re.search(r"^##\s+Exercises\b", cell.source, flags=re.M | re.I):
            return i
    return None


def slide_convention_problems(nb: Any) -> list[str]:
    """Every way a notebook's slide metadata breaks the course's conventions (empty when fine)."""
    cells = nb.cells
    problems = []
    if not cells or cells[0].cell_type != "markdown" or slide_type(cells[0]) != "slide" \
            or not cells[0].source.lstrip().startswith("# ") or "learning objectives" not in cells[0].source.lower():
        problems.append("cell 0 must be the title ('# ...') and learning objectives, with slide_type 'slide'")
    for i, cell in enumerate(cells):
        if "slideshow" not in cell.metadata:
            problems.append(f"cell {i} has no slideshow metadata (slide_type)")
        if "parameters" in cell.metadata.get("tags", []) and slide_type(cell) != "skip":
            problems.append(f"cell {i} is the parameters cell: its slide_type must be 'skip'")
    for i in range(1, _section_start(cells)):
        if cells[i].cell_type == "code" and slide_type(cells[i]) != "skip":
            problems.append(f"cell {i} is setup code before the first section: its slide_type must be 'skip'")
    for i, cell in enumerate(cells):
        if has_figure(cell) and slide_type(cell) not in ("slide", "subslide"):
            problems.append(f"cell {i} shows a figure: it must start a 'slide' or 'subslide' "
                            f"(is {slide_type(cell)!r})")
    if not any(slide_type(c) == "fragment" for c in cells):
        problems.append("no cell has slide_type 'fragment': reveal at least one conclusion step by step")
    start = exercises_start(cells)
    if start is not None:
        for i in range(start + 1, len(cells)):
            if slide_type(cells[i]) not in ("skip", "notes"):
                problems.append(f"cell {i} is an exercise answer or solution: its slide_type must be 'skip'")
    return problems


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
