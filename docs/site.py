"""Build the course website offline: ``make site`` (= ``.venv/bin/python docs/site.py``).

The committed, executed notebooks are staged with the pages of docs/ into ``build/site-src``,
the tables of the performance and findings pages are generated there from the committed result
files (``tlcourse/experiments/results/*.json``), every lesson's reveal.js deck is rendered next to them, and
Sphinx with MyST-NB and the book theme writes ``build/site``. No notebook is executed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat
from sphinx.cmd.build import build_main

from tlcourse.courseware import readme
from tlcourse.courseware.slides import build_slides
from tlcourse.experiments import decision_matrix as dm
from tlcourse.experiments import results_file
from tlcourse.strategies import STRATEGIES, STRATEGY_LABELS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def lesson_notebooks(root: Path = ROOT) -> list[Path]:
    """The course's numbered notebooks, in order."""
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def lesson_title(nb: Any) -> str:
    """The notebook's first ``# `` heading, without its number (``01 · Data loading`` -> ``Data loading``)."""
    for cell in nb.cells:
        for line in cell.source.splitlines() if cell.cell_type == "markdown" else []:
            if line.startswith("# "):
                return line[2:].split("·", 1)[-1].strip()
    raise ValueError("a lesson notebook needs a '# ' title")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str]) -> str:
    """A pipe table: ``columns`` maps each row key to its header."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[k]).replace("|", "\\|") for k in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def lessons_table(notebooks: Sequence[Path]) -> str:
    """Index page's table: each lesson, its committed run time and its slides."""
    rows = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        seconds = nb.metadata.get("papermill", {}).get("duration")
        rows.append({"n": path.stem[:2], "lesson": f"{{doc}}`{lesson_title(nb)} </lessons/{path.stem}>`",
                     "time": f"{seconds / 60:.0f} min" if seconds else "-",
                     "slides": f'<a href="slides/{path.stem}.slides.html">slides</a>'})
    return markdown_table(rows, {"n": "#", "lesson": "lesson", "time": "run time (default profile, 2-core CPU)",
                                 "slides": "deck"})


def decision_matrix_table(doc: Mapping[str, Any]) -> str:
    """The reference run's accuracy per quadrant and strategy (mean over seeds, 95% t-interval),
    and the textbook's verdict per quadrant, from tlcourse/experiments/results/04_decision_matrix_reference.json."""
    summary = dm.summarize(doc["rows"])
    columns = {"quadrant": "quadrant", **{s: STRATEGY_LABELS.get(s, s) for s in STRATEGIES}}
    seeds = {q: max(t[s]["n"] for s in t) for q, t in summary.items()}
    rows = [{**r, "quadrant": f"{r['quadrant'].replace('_', ' & ')} ({seeds[r['quadrant']]} seeds)"}
            for r in dm.interval_rows(summary)]
    verdicts = [f"- **{q.replace('_', ' & ')}**: {dm.textbook_verdict(q, t)[1]}" for q, t in summary.items()]
    meta = doc["meta"]
    scale = meta.get("scale", {})
    head = (f"Written {meta.get('written', '?')} by `{meta.get('command', '?')}`; {meta.get('backbone')} at "
            f"{scale.get('size')} px, {scale.get('small')} and {scale.get('large')} training images per class.\n\n")
    return head + markdown_table(rows, columns) + "\nThe textbook's choice against the best other strategy:\n\n" \
        + "\n".join(verdicts) + "\n"


def bf16_table(doc: Mapping[str, Any]) -> str:
    """float32 against bf16 training, per run, from tlcourse/experiments/results/bf16_parity.json."""
    rows = []
    for backbone, s in doc["summary"].items():
        run = doc["meta"]["runs"][backbone]
        per_seed = s.get("per_seed", [])
        rows.append({
            "run": f"{backbone}, {'ImageNet' if run['pretrained'] else 'random'} weights, {run['epochs']} epochs",
            "fp32": " / ".join(f"{100 * p['fp32_acc']:.1f}" for p in per_seed) + "%",
            "bf16": " / ".join(f"{100 * p['bf16_acc']:.1f}" for p in per_seed) + "%",
            "over": s["verdict_over_seeds"],
            "paired": "; ".join(f"{100 * p['diff']:+.1f} (p={p['mcnemar_p']:.2f})" for p in per_seed),
            "speed": f"{min(p['speedup'] for p in per_seed):.2f}-{max(p['speedup'] for p in per_seed):.2f}x",
        })
    meta = doc["meta"]
    head = f"Run {meta.get('date', '?')[:10]} with `{meta.get('command', '?')}` (torch {meta.get('torch')}).\n\n"
    return head + markdown_table(rows, {"run": "run", "fp32": "float32, per seed", "bf16": "bf16, per seed",
                                        "over": "bf16 - float32 over seeds", "paired": "per seed, bf16 - float32 "
                                        "(McNemar)", "speed": "whole fit faster"})


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "(an interactive widget: run the notebook in JupyterLab to use it)"


def _replace_widgets(nb: Any) -> None:
    """Widget outputs need a live kernel: the page says so instead of showing their Python repr
    (``VBox(children=...``) or a progress bar frozen at 0%."""
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if WIDGET_VIEW in output.get("data", {}):
                output["data"] = {"text/plain": WIDGET_NOTE}


def stage(out: Path, root: Path = ROOT) -> list[Path]:
    """Lay out the Sphinx source in ``out``: docs' pages, the lessons, generated tables, the decks."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(DOCS, out, ignore=shutil.ignore_patterns("site.py", "__pycache__"))
    (out / "lessons").mkdir()
    notebooks = lesson_notebooks(root)
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        link = nbformat.v4.new_markdown_cell(
            f'<a class="tlcourse-slides" href="../slides/{path.stem}.slides.html">Open this lesson\'s slides</a>'
            f" · run it yourself: `notebooks/{path.name}`")
        nb.cells.insert(1, link)
        _replace_widgets(nb)
        nbformat.write(nb, out / "lessons" / path.name)
    generated = out / "generated"
    generated.mkdir()
    (generated / "lessons.md").write_text(lessons_table(notebooks))
    (generated / "decision_matrix.md").write_text(
        decision_matrix_table(json.loads(results_file("04_decision_matrix_reference.json").read_text())))
    (generated / "bf16_parity.md").write_text(bf16_table(json.loads(results_file("bf16_parity.json").read_text())))
    for name in readme.BLOCKS:  # the README's tables (findings, the source articles' claims), the same text
        (generated / f"{name}.md").write_text(readme.render(name))
    build_slides(out=out / "_extra" / "slides", source=root / "notebooks")
    return notebooks


def build(out: Path, src: Path) -> int:
    """Stage and build; returns Sphinx's exit code (warnings are errors: a broken link fails)."""
    stage(src)
    if out.exists():
        shutil.rmtree(out)  # no page of an earlier build survives
    return build_main(["-b", "html", "-q", "-W", "--keep-going", "-j", "1", str(src), str(out)])


def site_pages(site: Path) -> list[Path]:
    """The built site's HTML pages: lessons, docs' pages, index, search (not the decks, not the theme's)."""
    return sorted(p for p in site.rglob("*.html") if p.relative_to(site).parts[0] not in ("slides", "_static"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    parser.add_argument("--src", type=Path, default=ROOT / "build" / "site-src")
    args = parser.parse_args(argv)
    start = time.monotonic()
    code = build(args.out.resolve(), args.src.resolve())
    pages = len(site_pages(args.out))
    print(f"[site] {'built' if code == 0 else 'FAILED'} {args.out}/index.html: {pages} pages + "
          f"{len(list((args.out / 'slides').glob('*.slides.html')))} decks in {time.monotonic() - start:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
