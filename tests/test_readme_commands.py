"""The README as a newcomer reads it: short, with the commands and lesson table it promises, and
its no-``make`` commands working as written in a fresh clone of this repository.

The fresh-clone test creates a new virtual environment and installs the course into it with
exactly the README's commands: a few minutes (torch is large), from pip's configured sources,
which are local on the development machine and CI's. It is the only test that does a full install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 150


def readme() -> str:
    return README.read_text(encoding="utf-8")


def code_block(after_heading: str, language: str) -> list[str]:
    """The command lines of the first ``language`` code block after a ``## `` heading."""
    section = readme().split(f"## {after_heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert block, f"no {language} block under '## {after_heading}'"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_is_short_and_has_what_a_newcomer_needs() -> None:
    text = readme()
    assert len(text.splitlines()) <= MAX_LINES
    for needed in ("make course", "make test", "python -m tlcourse fit FOLDER --out DIR", "make site",
                   "make slides", "make lab", "environment-cpu.yml"):
        assert needed in text, needed


def test_every_relative_link_of_the_readme_exists() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme())
    assert links
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert missing == []


def test_the_lesson_table_lists_every_notebook_with_its_committed_run_time() -> None:
    rows = {m.group(1): m.group(2) for m in
            re.finditer(r"^\| \d\d \| \[`(\d\d_\w+)`\]\(notebooks/\1\.ipynb\) \|.*\| (\d+) min \|$", readme(), re.M)}
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(rows) == [p.stem for p in notebooks]
    for path in notebooks:
        seconds = nbformat.read(path, as_version=4).metadata["papermill"]["duration"]
        assert int(rows[path.stem]) == max(1, round(seconds / 60)), f"{path.stem}: {seconds:.0f} s"


def test_the_windows_commands_mirror_the_macos_ones() -> None:
    unix, windows = code_block("Without make (Windows, macOS)", "bash"), code_block("Without make (Windows, macOS)",
                                                                                    "powershell")
    assert len(unix) == len(windows) == 4
    assert windows[0] == "py -m venv .venv"
    for u, w in zip(unix[1:], windows[1:]):
        assert w.startswith(".venv\\Scripts\\python -m ") and u.startswith(".venv/bin/python -m ")
    assert windows[1] == '.venv\\Scripts\\python -m pip install -e ".[test]"'
    assert [u.split(" -m ", 1)[1] for u in unix[2:]] == [w.split(" -m ", 1)[1] for w in windows[2:]]


@pytest.mark.timeout(900)
def test_the_no_make_commands_work_as_written_in_a_fresh_clone(tmp_path: Path) -> None:
    """Every line of the macOS/Linux block, run by bash in a fresh clone. The last line runs the whole
    course (tens of minutes; the notebook tests execute every notebook already), so it runs with
    ``--help`` added: the command exists, with that spelling, in the new environment."""
    lines = code_block("Without make (Windows, macOS)", "bash")
    assert lines[-1] == ".venv/bin/python -m tlcourse course"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    # The course installs as in a learner's shell: no virtual environment of this run leaks in.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    assert shutil.which("python3", path=env["PATH"]), "the README's commands need python3 on PATH"
    # Cost: pip's sources are local here, so the time goes to unpacking torch; skipping the byte
    # compilation of its files (Python compiles what it imports anyway) saves part of that.
    env["PIP_NO_COMPILE"] = "1"
    # ... and, as on a learner's machine, the first command that imports torch writes its bytecode for
    # the next one (this machine sets PYTHONDONTWRITEBYTECODE, which would recompile torch every time).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        _run_in(clone, lines, env)
    finally:
        shutil.rmtree(clone, ignore_errors=True)  # a torch install is gigabytes: keep none of it


def _run_in(clone: Path, lines: list[str], env: dict[str, str]) -> None:
    timings = []
    for line in lines[:-1] + [lines[-1] + " --help"]:
        start = time.monotonic()
        done = subprocess.run(["bash", "-c", line], cwd=clone, env=env, capture_output=True, text=True, timeout=800)
        timings.append(f"{time.monotonic() - start:.0f} s  {line}")
        assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    print("\n".join(timings))
    python = clone / ".venv" / "bin" / "python"
    shown = subprocess.run([str(python), "-c", "import tlcourse, torch; print(tlcourse.__file__, torch.__version__)"],
                           capture_output=True, text=True, env=env, check=True, timeout=120, cwd=clone)
    assert shown.stdout.startswith(str(clone / "tlcourse")), shown.stdout  # the clone's package, editable
    assert "status" in done.stdout or "usage" in done.stdout.lower()


def test_the_readme_numbers_are_the_committed_results():
    """The README's generated blocks (findings, the source articles' claims) hold what the committed
    results give today: after a reference run or a re-executed notebook, run
    ``python -m tlcourse.courseware.readme`` and commit the README."""
    from tlcourse.courseware import readme

    blocks = readme.blocks_in((ROOT / "README.md").read_text(encoding="utf-8"))
    assert set(blocks) == set(readme.BLOCKS), "every generated block appears in the README once"
    stale = [name for name, body in blocks.items() if body != readme.render(name)]
    assert not stale, f"README blocks {stale} differ from the committed results: run python -m tlcourse.courseware.readme"
