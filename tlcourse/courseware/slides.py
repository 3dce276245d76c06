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


#: Lines of code one slide shows; a longer cell continues on sub-slides (split at blank lines).
MAX_CODE_LINES = 22
#: Lines of text output (a log, a printed result) one slide shows; the full text goes to the notes.
MAX_OUTPUT_LINES = 10
#: Rows of a table one slide shows; the full table goes to the notes.
MAX_TABLE_ROWS = 8
#: Characters of code or output one slide line holds before it wraps (wrapped lines count as lines).
CHARS_PER_LINE = 110
#: Lines of code or output (the unit of :func:`estimated_lines`) one slide holds; a slide whose cells
#: add up to more continues on a sub-slide from the cell that crosses the line.
SLIDE_LINES = 40
#: Lines an image takes on a slide (its max-height in the deck's CSS is 560 of the slide's 800 px).
IMAGE_LINES = 24


def _visual_lines(text: str) -> int:
    """Lines ``text`` takes on a slide where lines wrap at :data:`CHARS_PER_LINE` characters."""
    return sum(max(1, -(-len(line) // CHARS_PER_LINE)) for line in text.splitlines())


def _as_printed(text: str) -> str:
    """Terminal text as it ends up on screen: a carriage return (a progress bar) rewrites its line."""
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
                     for line in text.split("\n"))


def shorten_text(text: str, budget: int = 0) -> tuple[str, bool]:
    """(what the slide shows, whether it was cut) for a log or printed result.

    Within ``budget`` wrapped lines (default :data:`MAX_OUTPUT_LINES`) the text stays whole. Past it,
    the slide shows the first lines and the last ones (where a log says how it ended), with a line
    between them that says how many lines the speaker notes add.
    """
    budget = budget or MAX_OUTPUT_LINES
    lines = text.rstrip("\n").split("\n")
    if _visual_lines(text) <= budget:
        return text, False
    head_budget, tail_budget = (budget - 1) // 3, budget - 1 - (budget - 1) // 3
    head, used = [], 0
    for line in lines:
        cost = _visual_lines(line)
        if used + cost > head_budget:
            break
        head.append(line)
        used += cost
    tail, used = [], 0
    for line in reversed(lines[len(head):]):
        cost = _visual_lines(line)
        if used + cost > tail_budget:
            break
        tail.insert(0, line)
        used += cost
    if not head and not tail:  # one enormous line
        return lines[0][: CHARS_PER_LINE * (budget - 1)] + f"\n⋯ {len(text):,} characters in all: the full text is in the speaker notes", True
    hidden = len(lines) - len(head) - len(tail)
    middle = f"⋯ {hidden} more line{'s' * (hidden != 1)} in the speaker notes (press s) ⋯" if hidden else \
        "⋯ long lines shortened: the full text is in the speaker notes (press s) ⋯"
    return "\n".join([*head, middle, *tail]) + "\n", True


_ROW = re.compile(r"<tr\b.*?</tr>", flags=re.S | re.I)


def shorten_table(html: str, rows: int = 0) -> tuple[str, int]:
    """(the HTML with each table's body cut to ``rows`` rows, how many rows were left out).

    A row that says how many more rows the speaker notes hold replaces the ones left out.
    """
    rows = rows or MAX_TABLE_ROWS
    left_out = 0

    def cut(body: re.Match[str]) -> str:
        nonlocal left_out
        found = _ROW.findall(body.group(2))
        if len(found) <= rows:
            return body.group(0)
        left_out += len(found) - rows
        columns = max(1, len(re.findall(r"<t[dh]\b", found[0], flags=re.I)))
        more = (f'<tr class="tl-more"><td colspan="{columns}">⋯ {len(found) - rows} more rows in the '
                "speaker notes (press s)</td></tr>")
        return body.group(1) + "".join(found[:rows]) + more + body.group(3)

    html = re.sub(r"(<tbody\b[^>]*>)(.*?)(</tbody>)", cut, html, flags=re.S | re.I)
    return html, left_out


def split_code(source: str, budget: int = 0) -> list[str]:
    """A long code cell in parts of at most ``budget`` wrapped lines (default :data:`MAX_CODE_LINES`),
    cut at blank lines where it can (between statements), else at the budget."""
    budget = budget or MAX_CODE_LINES
    if _visual_lines(source) <= budget:
        return [source]
    parts, current, used = [], [], 0
    for line in source.split("\n"):
        cost = _visual_lines(line)
        if current and used + cost > budget:
            # go back to the last blank line in this part, when there is one past its first half
            blank = max((j for j, text in enumerate(current) if not text.strip()), default=-1)
            if blank > len(current) // 2:
                carry = current[blank + 1:]
                current = current[:blank]
            else:
                carry = []
            parts.append("\n".join(current).strip("\n"))
            current, used = carry, sum(_visual_lines(t) for t in carry)
        current.append(line)
        used += cost
    parts.append("\n".join(current).strip("\n"))
    return [p for p in parts if p.strip()]


def estimated_lines(cell: Any) -> float:
    """About how many lines of code text a cell takes on a slide (prose is set larger, so it
    counts more; a table row, an image, the gaps between cells too). Rough, on purpose: the browser
    test measures the real thing; this only decides where a crowded slide continues."""
    if cell.cell_type == "markdown":
        text = re.sub(r"<[^>]+>", "", cell.source)
        return sum(1.3 * max(1, -(-len(line) // 90)) + (0.6 if line.startswith("#") else 0)
                   for line in text.splitlines() if line.strip()) + 1
    if cell.cell_type != "code":
        return 0
    lines = _visual_lines(cell.source) + 1.5
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if output.get("output_type") == "stream":
            lines += _visual_lines(output.get("text", "")) + 1
        elif any(m in data for m in IMAGE_MIMES):
            lines += IMAGE_LINES
        elif "text/html" in data:
            html = data["text/html"] if isinstance(data["text/html"], str) else "".join(data["text/html"])
            # a row set in the table's larger type takes a line and a half, three once its cells wrap
            lines += sum(1.6 if len(re.sub(r"<[^>]+>", "", row)) <= 95 else 3.0 for row in _ROW.findall(html)) \
                + 2 * len(re.findall(r"<caption", html)) + 1
        elif "text/plain" in data:
            lines += _visual_lines(data["text/plain"] if isinstance(data["text/plain"], str)
                                   else "".join(data["text/plain"])) + 1
    return lines


def split_markdown(source: str, budget: float = 0) -> list[str]:
    """A markdown cell too long for one slide (a long list) in parts of about ``budget`` lines
    (:func:`estimated_lines`, default :data:`SLIDE_LINES`), cut before a paragraph or a top-level
    list item; each later part repeats the cell's heading, marked as continued."""
    from nbformat.v4 import new_markdown_cell

    budget = budget or SLIDE_LINES
    if estimated_lines(new_markdown_cell(source)) <= budget:
        return [source]
    heading = next((line for line in source.splitlines() if line.startswith("#")), None)
    parts, current = [], []
    for line in source.split("\n"):
        starts = not line.strip() or re.match(r"(\d+[.)]|[-*+])\s", line)
        if starts and current and estimated_lines(new_markdown_cell("\n".join([*current, line]))) > budget:
            parts.append("\n".join(current).strip("\n"))
            current = [f"{heading} (continued)", ""] if heading else []
        current.append(line)
    parts.append("\n".join(current).strip("\n"))
    return [p for p in parts if p.strip()]


def _paced(cells: list[Any]) -> list[Any]:
    """The deck's cells with a sub-slide started wherever a slide's cells would add up to more than
    :data:`SLIDE_LINES` (:func:`estimated_lines`): the crowded slide continues below it."""
    paced, used, on_slide = [], 0.0, 0
    for cell in cells:
        kind = slide_type(cell)
        if kind in ("skip", "notes"):
            paced.append(cell)
            continue
        if kind in ("slide", "subslide"):
            used, on_slide = 0.0, 0
        cost = estimated_lines(cell)
        if on_slide and used + cost > SLIDE_LINES:
            cell.metadata["slideshow"] = {"slide_type": "subslide"}
            used, on_slide = 0.0, 0
        used += cost
        on_slide += 1
        paced.append(cell)
    return paced


def split_code_for_outputs(source: str, output_lines: float) -> list[str]:
    """:func:`split_code`, and where the last part and the cell's outputs (``output_lines``, e.g. a
    figure) would not share a slide, that part's last statements split off so they can: the outputs
    stay next to the code that made them."""
    parts = split_code(source)
    room = SLIDE_LINES - output_lines - 1.5
    last = parts[-1].split("\n")
    if _visual_lines(parts[-1]) <= room or len(last) < 2:
        return parts
    room = max(room, 3)
    blanks = [k for k, line in enumerate(last) if not line.strip() and 0 < k < len(last) - 1]
    cut = next((k + 1 for k in blanks if _visual_lines("\n".join(last[k + 1:])) <= room), None)
    if cut is None:  # no blank line leaves a short enough tail: keep the last lines that fit
        cut, used = len(last), 0
        while cut > 1 and used + _visual_lines(last[cut - 1]) <= room:
            cut -= 1
            used += _visual_lines(last[cut])
        while cut < len(last) and last[cut][:1] in (" ", "\t", ")", "]", "}"):  # not inside a block
            cut += 1
        if cut >= len(last):
            return parts
    head, tail = "\n".join(last[:cut]).strip("\n"), "\n".join(last[cut:]).strip("\n")
    return [*parts[:-1], head, tail] if head.strip() and tail.strip() else parts


def _fenced(text: str, lang: str = "") -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _shorten_outputs(outputs: list[Any]) -> tuple[list[Any], list[str]]:
    """(the outputs as the slide shows them, the notes that hold what was cut)."""
    import copy

    shown, notes = [], []
    for output in outputs:  # consecutive writes to one stream become one block, as on screen
        if output.get("output_type") == "stream" and shown and shown[-1].get("output_type") == "stream" \
                and shown[-1].get("name") == output.get("name"):
            shown[-1]["text"] += output.get("text", "")
            continue
        shown.append(copy.deepcopy(output))
    for output in shown:
        if output.get("output_type") == "stream":
            text = _as_printed(output.get("text", ""))
            output["text"], cut = shorten_text(text)
            if cut:
                notes.append("Full output:\n\n" + _fenced(text, "text"))
            continue
        data = output.get("data", {})
        if "text/html" in data:
            html = data["text/html"] if isinstance(data["text/html"], str) else "".join(data["text/html"])
            data["text/html"], left_out = shorten_table(html)
            if left_out:
                notes.append(data["text/markdown"] if "text/markdown" in data else html)
                data.pop("text/markdown", None)
            continue
        if "text/plain" in data and not any(m in data for m in (*IMAGE_MIMES, "text/markdown", "text/latex")):
            text = data["text/plain"] if isinstance(data["text/plain"], str) else "".join(data["text/plain"])
            data["text/plain"], cut = shorten_text(text)
            if cut:
                notes.append("Full output:\n\n" + _fenced(text, "text"))
    return shown, notes


def _notes_cell(text: str) -> Any:
    from nbformat.v4 import new_markdown_cell

    note = new_markdown_cell(text)
    note.metadata["slideshow"] = {"slide_type": "notes"}
    return note


def presentable(nb: Any) -> Any:
    """A copy of the notebook as the deck shows it, with what would not fit a slide moved aside.

    Long prose: supporting paragraphs go to the speaker notes (:func:`split_long_prose`). Long code
    continues on sub-slides (:func:`split_code`). Long logs and printed results show their first and
    last lines, long tables their first rows, and the speaker notes hold them whole
    (:func:`shorten_text`, :func:`shorten_table`). The notebook itself is left as it is.
    """
    import copy

    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        kind = slide_type(cell)
        if kind in ("skip", "notes"):
            cells.append(cell)
            continue
        if cell.cell_type == "markdown":
            shown, notes = split_long_prose(cell.source)
            for n, part in enumerate(split_markdown(shown)):
                piece = copy.deepcopy(cell)
                piece.source = part
                if n:
                    piece.metadata["slideshow"] = {"slide_type": "subslide"}
                    if "id" in cell:
                        piece.id = f"{cell.id}-part{n + 1}"
                cells.append(piece)
            if notes:
                cells.append(_notes_cell(notes))
            continue
        if cell.cell_type != "code":
            cells.append(cell)
            continue
        cell.outputs, notes = _shorten_outputs(cell.get("outputs", []))
        output_lines = estimated_lines(cell) - _visual_lines(cell.source) - 1.5
        parts = split_code_for_outputs(cell.source, output_lines)
        for n, part in enumerate(parts[:-1]):
            piece = copy.deepcopy(cell)
            piece.source, piece.outputs = part, []
            piece.execution_count = None  # no "Out" prompt: the results come with the last part
            if n:
                piece.metadata["slideshow"] = {"slide_type": "subslide"}
            if "id" in cell:
                piece.id = f"{cell.id}-part{n + 1}"
            cells.append(piece)
        if len(parts) > 1:
            cell.source = parts[-1]
            cell.metadata["slideshow"] = {"slide_type": "subslide"}
        cells.append(cell)
        cells.extend(_notes_cell(note) for note in notes)
    nb.cells = _paced(cells)
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


# ---------------------------------------------------------------- does every slide fit the screen?

#: The viewport the fit check and the handouts use (a 720p projector).
VIEWPORT = (1280, 720)
#: Slack, in slide pixels, for sub-pixel rounding when comparing content with the slide.
FIT_TOLERANCE = 2

#: JavaScript that visits every slide of a ready reveal.js deck with all its fragments shown and
#: measures, in slide pixels (reveal.js's width x height, before it scales to the window), the
#: box around every visible element of the slide, and the elements that cut their own content off
#: (a scrolled or hidden overflow: the audience cannot scroll a projected slide).
MEASURE_JS = r"""(() => {
  Reveal.configure({transition: 'none', backgroundTransition: 'none'});
  const cfg = Reveal.getConfig(), W = cfg.width, H = cfg.height;
  const rows = [];
  for (const slide of Reveal.getSlides()) {
    const at = Reveal.getIndices(slide);
    Reveal.slide(at.h, at.v || 0);
    while (Reveal.nextFragment()) {}
    const scale = Reveal.getScale() || 1;
    const box = slide.closest('.slides').getBoundingClientRect();
    let top = Infinity, bottom = -Infinity, left = Infinity, right = -Infinity;
    const clipped = [];
    for (const el of slide.querySelectorAll('*')) {
      if (el.closest('aside.notes')) continue;
      // not rendered: display none, or the body of a closed <details> (content-visibility hidden)
      if (el.checkVisibility ? !el.checkVisibility() : (el.closest('details:not([open])') && !el.closest('summary'))) continue;
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      top = Math.min(top, r.top); bottom = Math.max(bottom, r.bottom);
      left = Math.min(left, r.left); right = Math.max(right, r.right);
      const style = getComputedStyle(el);
      const hiddenX = style.overflowX !== 'visible' && el.scrollWidth > el.clientWidth + 2;
      const hiddenY = style.overflowY !== 'visible' && el.scrollHeight > el.clientHeight + 2;
      if ((hiddenX || hiddenY) && el.clientHeight > 0) {
        clipped.push({tag: el.tagName.toLowerCase(), cls: String(el.className).slice(0, 60),
                      hidden_width: Math.max(0, el.scrollWidth - el.clientWidth),
                      hidden_height: Math.max(0, el.scrollHeight - el.clientHeight)});
      }
    }
    const heading = slide.querySelector('h1, h2, h3, h4');
    rows.push({h: at.h, v: at.v || 0, width: W, height: H, zoom: parseFloat(slide.style.zoom) || 1,
               title: (heading ? heading.textContent : (slide.textContent || '')).replace(/[¶\s]+/g, ' ').trim().slice(0, 70),
               content_width: isFinite(left) ? (right - left) / scale : 0,
               content_height: isFinite(top) ? (bottom - top) / scale : 0,
               off_top: isFinite(top) ? (box.top - top) / scale : 0,
               off_bottom: isFinite(bottom) ? (bottom - box.bottom) / scale : 0,
               off_left: isFinite(left) ? (box.left - left) / scale : 0,
               off_right: isFinite(right) ? (right - box.right) / scale : 0,
               clipped: clipped.slice(0, 5)});
  }
  Reveal.slide(0, 0);
  return rows;
})()"""


@dataclass(frozen=True)
class SlideFit:
    """How one slide's content compares with the slide, in slide pixels (all fragments shown)."""

    h: int
    v: int
    title: str
    width: int  # the slide (reveal.js's configured width and height)
    height: int
    content_width: float  # the box around everything the slide shows
    content_height: float
    outside: float  # the most any content sticks out past an edge of the slide (0 when inside)
    clipped: tuple[dict[str, Any], ...]  # elements that hide part of their own content (scroll boxes)
    zoom: float = 1.0  # below 1 where the deck shrank the slide's content to fit (the template's fitSlide)

    @property
    def fits(self) -> bool:
        """True when the audience sees all of the slide: nothing outside it, nothing scrolled away."""
        return (self.content_height <= self.height + FIT_TOLERANCE and self.content_width <= self.width + FIT_TOLERANCE
                and self.outside <= FIT_TOLERANCE and not self.clipped)

    def describe(self) -> str:
        """One line for a failure message or a report."""
        what = f"slide {self.h}.{self.v} {self.title[:50]!r}: content {self.content_width:.0f}x{self.content_height:.0f}" \
               f" on a {self.width}x{self.height} slide" + (f" (shrunk to {self.zoom:.2f})" if self.zoom < 1 else "")
        if self.outside > FIT_TOLERANCE:
            what += f", {self.outside:.0f} px outside it"
        if self.clipped:
            c = self.clipped[0]
            what += f", {len(self.clipped)} box(es) hiding content (e.g. <{c['tag']} class={c['cls']!r}> hides " \
                    f"{c['hidden_width']}x{c['hidden_height']} px)"
        return what


def measure_deck(browser: Any, url: str) -> list[SlideFit]:
    """Open the deck at ``url`` in ``browser`` (a :class:`tlcourse.courseware.browser.Chromium`) and
    measure every slide with all its fragments shown, at the viewport :data:`VIEWPORT`."""
    browser.set_viewport(*VIEWPORT)
    browser.open(url)
    browser.wait_for("typeof Reveal !== 'undefined' && Reveal.isReady()", timeout=20)
    rows = browser.evaluate(MEASURE_JS)
    return [SlideFit(h=r["h"], v=r["v"], title=r["title"], width=r["width"], height=r["height"],
                     content_width=r["content_width"], content_height=r["content_height"],
                     outside=max(0.0, r["off_top"], r["off_bottom"], r["off_left"], r["off_right"]),
                     clipped=tuple(r["clipped"]), zoom=r["zoom"]) for r in rows]


# ---------------------------------------------------------------- PDF handouts

def print_handouts(decks: Sequence[Path], *, browser: Any = None, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Print each deck to ``<stem>.pdf`` next to it through headless Chromium, with reveal.js's
    print layout (``?print-pdf``): one page per slide, every fragment shown.

    ``browser`` is a :class:`tlcourse.courseware.browser.Chromium` to reuse (one is started and
    closed here otherwise). Returns one row per deck: deck, pdf, slides (as reveal.js counts them)
    and pages (in the PDF, :func:`pdf_page_count`).
    """
    from tlcourse.courseware.browser import Chromium, find_chromium

    if browser is None:
        binary = find_chromium()
        if binary is None:
            raise FileNotFoundError("The PDF handouts are printed by headless Chromium, which is not installed: "
                                    "`apt-get install chromium` (Debian/Ubuntu), then run the command again.")
        with Chromium(binary, width=VIEWPORT[0], height=VIEWPORT[1], timeout=timeout) as own:
            return print_handouts(decks, browser=own, timeout=timeout)
    rows = []
    for deck in decks:
        deck = Path(deck).resolve()
        browser.open(deck.as_uri() + "?print-pdf")
        # reveal.js wraps each slide in a .pdf-page once its print layout is done
        total = browser.wait_for("typeof Reveal !== 'undefined' && Reveal.isReady() && "
                                 "document.querySelectorAll('.pdf-page').length >= Reveal.getTotalSlides() && "
                                 "Reveal.getTotalSlides()", timeout=timeout)
        browser.wait_for("document.fonts.status === 'loaded' && Array.from(document.images).every(i => i.complete)",
                         timeout=timeout)
        pdf = browser.print_pdf(deck.with_name(deck.name.split(".")[0] + ".pdf"))
        rows.append({"deck": str(deck), "pdf": str(pdf), "slides": int(total), "pages": pdf_page_count(pdf)})
    return rows


def pdf_page_count(pdf: Path) -> int:
    """Pages in a PDF: poppler's ``pdfinfo`` when installed, else the file's page objects counted."""
    import subprocess

    if shutil.which("pdfinfo"):
        info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^Pages:\s+(\d+)", info, flags=re.M)
        if found:
            return int(found.group(1))
    return len(re.findall(rb"/Type\s*/Page(?![A-Za-z])", Path(pdf).read_bytes()))


def check_fit(decks: Sequence[Path], *, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Measure every slide of each deck (:func:`measure_deck`, one headless Chromium for all).

    Returns one row per deck: deck, slides, overflowing (the :class:`SlideFit` of each slide that
    does not fit), shrunk (slides the template zoomed out to fit) and min_zoom.
    """
    from tlcourse.courseware.browser import Chromium, find_chromium

    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("Measuring the slides needs headless Chromium, which is not installed: "
                                "`apt-get install chromium` (Debian/Ubuntu), then run the command again.")
    rows = []
    with Chromium(binary, width=VIEWPORT[0], height=VIEWPORT[1], timeout=timeout) as browser:
        for deck in decks:
            fits = measure_deck(browser, Path(deck).resolve().as_uri())
            rows.append({"deck": str(deck), "slides": len(fits), "overflowing": [f for f in fits if not f.fits],
                         "shrunk": sum(f.zoom < 1 for f in fits), "min_zoom": min((f.zoom for f in fits), default=1.0)})
    return rows
