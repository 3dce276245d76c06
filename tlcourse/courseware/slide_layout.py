"""How a notebook becomes slides that fit the screen: what its slide metadata implies, and how long
prose, logs, tables and code are paced over slides, sub-slides and speaker notes.

:func:`presentable` turns an executed notebook into the notebook the deck is rendered from (the
lesson itself is untouched): long logs and printed results show their first and last lines and long
tables their first rows, with the whole text in the speaker notes; long code continues on
sub-slides; a crowded slide continues on a sub-slide. :func:`slide_convention_problems` checks the
metadata conventions listed in :mod:`tlcourse.courseware.slides`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

#: Words of markdown one slide holds comfortably; past this, supporting paragraphs become speaker notes.
MAX_SLIDE_WORDS = 120
#: Output types that are figures.
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")

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


