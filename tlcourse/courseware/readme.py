"""The README's numbers, generated from the committed runs, so the README and the lessons never disagree.

A generated block in ``README.md`` sits between two markers::

    <!-- generated:findings -->
    ... (written by this module) ...
    <!-- /generated:findings -->

:data:`BLOCKS` says how each block is made; ``python -m tlcourse.courseware.readme`` rewrites the
blocks from the committed results (after a reference run or a re-executed notebook), and
``tests/test_readme_commands.py`` fails when a committed README block differs from what the
results give today.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from tlcourse.experiments import articles_claims
from tlcourse.experiments.findings import all_findings
from tlcourse.paths import project_root

__all__ = ["BLOCKS", "blocks_in", "render", "render_articles", "render_findings", "update"]

_MARKER = re.compile(r"<!-- generated:(?P<name>[a-z_]+) -->\n(?P<body>.*?)<!-- /generated:(?P=name) -->", re.S)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _effect(low: float | None, high: float | None, effect: float | None) -> str:
    if effect is None:
        return "n/a"
    if low is None or high is None:
        return f"{effect:+.1f} (no interval)"
    return f"{effect:+.1f} ({low:+.1f} to {high:+.1f})"


def render_findings() -> str:
    """One row per finding: id, question, effect in points with its 95% interval, measurable, what to do."""
    rows = ["| finding | question | effect, points (95% CI) | measurable | what to do |", "|---|---|---|---|---|"]
    for f in all_findings().values():
        rows.append(f"| `{f.id}` | {_cell(f.question)} | {_effect(f.low, f.high, f.effect)} | "
                    f"{'yes' if f.measurable else 'no'} | {_cell(f.do)} |")
    return "\n".join(rows) + "\n"


def render_articles() -> str:
    """The source articles' recipes and claims, each run by the course: what the article did and claimed,
    what the course ran, the measured result with its interval, the verdict, and the lesson it belongs to."""
    return articles_claims.markdown(articles_claims.committed_claims()) + "\n"


#: The README's generated blocks and the function that writes each.
BLOCKS: dict[str, Callable[[], str]] = {"findings": render_findings, "articles": render_articles}


def render(name: str) -> str:
    """The text block ``name`` should hold now."""
    if name not in BLOCKS:
        raise ValueError(f"No generated README block {name!r}; the blocks are: {', '.join(BLOCKS)}")
    return BLOCKS[name]()


def blocks_in(text: str) -> dict[str, str]:
    """The generated blocks a README holds, by name."""
    return {m["name"]: m["body"] for m in _MARKER.finditer(text)}


def update(path: Path | None = None) -> list[str]:
    """Rewrite every generated block of ``path`` (the README) from the committed results; returns
    the names of the blocks that changed."""
    path = path or project_root() / "README.md"
    text = path.read_text(encoding="utf-8")
    changed: list[str] = []

    def fill(m: re.Match[str]) -> str:
        body = render(m["name"])
        if body != m["body"]:
            changed.append(m["name"])
        return f"<!-- generated:{m['name']} -->\n{body}<!-- /generated:{m['name']} -->"

    new = _MARKER.sub(fill, text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return changed


if __name__ == "__main__":
    names = update()
    print("README blocks rewritten: " + (", ".join(names) if names else "none (already up to date)"))
    sys.exit(0)
