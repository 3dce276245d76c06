"""Tables for notebooks and the command line, instead of hand-aligned ``print`` formats.

``table(rows)`` takes a list of dicts (or of sequences with ``columns``) and returns a
:class:`Table` that Jupyter shows as a rendered table and ``print`` shows as aligned text.
Floats between 0 and 1 in a column named like an accuracy can be shown as percentages.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from tlcourse.paths import shown

__all__ = ["Table", "percent", "table"]


def percent(value: Any, digits: int = 1) -> str:
    """``0.9712`` -> ``"97.1%"``; anything that is not a number is shown as it is."""
    return f"{value:.{digits}%}" if isinstance(value, float) else str(value)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if value is None:
        return "-"
    if isinstance(value, PurePath):  # relative to the project or mirror, never this machine's absolute path
        return shown(value)
    return str(value)


@dataclass(repr=False)
class Table:
    """Rows of cells with named columns; rendered as HTML in Jupyter, aligned text in ``print``."""

    columns: list[str]
    rows: list[list[str]]
    title: str = ""

    def __str__(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        lines = [self.title] if self.title else []
        lines.append("  ".join(c.ljust(w) for c, w in zip(self.columns, widths)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in self.rows]
        return "\n".join(lines)

    def __repr__(self) -> str:  # what a terminal, nbval and Jupyter's text/plain output show
        return str(self)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in self.rows)
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def _repr_markdown_(self) -> str:
        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines += ["| " + " | ".join(v.replace("|", "\\|") for v in r) + " |" for r in self.rows]
        return "\n".join(lines)


def table(rows: Sequence[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str] | None = None, *,
          formats: Mapping[str, Callable[[Any], str]] | None = None, title: str = "") -> Table:
    """A :class:`Table` of ``rows``: dicts (columns from the first row's keys unless given) or
    sequences (``columns`` required). ``formats`` maps a column to a function that formats a cell,
    e.g. ``{"accuracy": percent}``."""
    formats = dict(formats or {})
    if columns is None:
        if not rows or not isinstance(rows[0], Mapping):
            raise ValueError("Give columns=... for rows that are not dicts (or for no rows).")
        columns = list(rows[0])
    columns = list(columns)
    cells = []
    for row in rows:
        values = [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row)
        if len(values) != len(columns):
            raise ValueError(f"A row has {len(values)} cells but there are {len(columns)} columns: {values}")
        cells.append([formats.get(c, _text)(v) for c, v in zip(columns, values)])
    return Table(columns, cells, title)
