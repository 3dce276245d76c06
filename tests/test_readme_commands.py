"""The README as a newcomer reads it: short, with the commands and lesson table it promises, and
its no-``make`` commands working as written in a fresh clone of this repository.

The README's install commands run once per CI run: ``make setup`` runs them, read from the README
(``scripts/readme_setup.py``), in CI's fresh clone, and the fresh-clone test checks its record and
runs the rest. Without such a record (a developer's checkout) the test clones the repository and
installs into a new virtual environment itself: a few minutes, torch is large.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import readme_setup  # noqa: E402  (standard library only: it runs before the course is installed)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SETUP = ROOT / "scripts" / "readme_setup.py"
MAX_LINES = 150


def readme() -> str:
    return README.read_text(encoding="utf-8")


def code_block(after_heading: str, language: str) -> list[str]:
    """The command lines of the first ``language`` code block after a ``## `` heading."""
    return readme_setup.readme_block(readme(), after_heading, language)


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
    assert windows[0] == "py -m venv --upgrade-deps .venv"
    for u, w in zip(unix[1:], windows[1:]):
        assert w.startswith(".venv\\Scripts\\python -m ") and u.startswith(".venv/bin/python -m ")
    assert windows[1] == '.venv\\Scripts\\python -m pip install -e ".[test]"'
    assert [u.split(" -m ", 1)[1] for u in unix[2:]] == [w.split(" -m ", 1)[1] for w in windows[2:]]


@pytest.mark.timeout(900)
def test_the_no_make_commands_work_as_written_in_a_fresh_clone(tmp_path: Path) -> None:
    """Every line of the macOS/Linux block, run by bash in a fresh clone. The last line runs the whole
    course (tens of minutes; the notebook tests execute every notebook already), so it runs with
    ``--help`` added: the command exists, with that spelling, in the new environment.

    ``make setup`` installs with the README's own lines (``scripts/readme_setup.py``). When its record
    shows that it ran the lines the README has now, into a new ``.venv`` of a clean clone (every CI
    run), this session's environment is that install, and only the remaining lines run here.
    Otherwise the test clones the checkout and runs every line itself (a few minutes: torch is large)."""
    lines = code_block("Without make (Windows, macOS)", "bash")
    assert lines[-1] == ".venv/bin/python -m tlcourse course"
    installs = readme_setup.install_lines(lines)
    assert installs == lines[:2] and installs[0] == "python3 -m venv --upgrade-deps .venv", "the block starts by installing"
    # The course installs as in a learner's shell: no virtual environment of this run leaks in.
    env = readme_setup.learner_env(ROOT)
    assert shutil.which("python3", path=env["PATH"]), "the README's commands need python3 on PATH"
    # ... and, as on a learner's machine, the first command that imports torch writes its bytecode for
    # the next one (this machine sets PYTHONDONTWRITEBYTECODE, which would recompile torch every time).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if setup_ran_the_readme(installs):
        _run_in(ROOT, lines[len(installs):], env)
        return
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    try:
        _run_in(clone, lines, env)  # pip does not byte-compile (PIP_COMPILE=0): Python compiles what it imports
    finally:
        shutil.rmtree(clone, ignore_errors=True)  # a torch install is gigabytes: keep none of it


def setup_ran_the_readme(installs: list[str], root: Path = ROOT) -> bool:
    """Whether ``make setup`` made ``root``'s ``.venv`` with exactly ``installs``, in a clean clone."""
    path = root / readme_setup.RECORD
    if not path.exists():
        return False
    record = json.loads(path.read_text(encoding="utf-8"))
    return (record.get("clean_checkout") is True and record.get("fresh_venv") is True
            and [step["line"] for step in record.get("ran", [])] == installs)


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


def test_setup_runs_the_readme_lines_in_a_learners_shell_and_records_them(tmp_path: Path) -> None:
    """scripts/readme_setup.py on a checkout whose README installs nothing heavy: the lines before the
    first ``-m tlcourse`` run in order, in the checkout, with no virtual environment on PATH; the record
    names them; a line that fails stops the setup with its exit code."""
    block = ["python3 -m venv .venv", 'python3 -c "import os; print(os.environ.get(\'VIRTUAL_ENV\'))" > seen.txt',
             "echo $PATH >> seen.txt", ".venv/bin/python -m tlcourse status"]
    (tmp_path / "README.md").write_text(f"# x\n\n## {readme_setup.HEADING}\n\n```bash\n" + "\n".join(block)
                                        + "\n```\n\n## Next\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "README.md"], cwd=tmp_path, check=True)
    env = {**os.environ, "VIRTUAL_ENV": str(ROOT / ".venv"), "PATH": f"{tmp_path / '.venv' / 'bin'}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, str(SETUP), "--root", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = (tmp_path / "seen.txt").read_text().splitlines()
    assert seen[0] == "None" and str(tmp_path / ".venv" / "bin") not in seen[1].split(":")
    record = json.loads((tmp_path / readme_setup.RECORD).read_text())
    assert [s["line"] for s in record["ran"]] == block[:3] and record["fresh_venv"] is True
    assert record["clean_checkout"] is False  # seen.txt and .venv are in it now, untracked
    assert setup_ran_the_readme(block[:3], tmp_path) is False
    record["clean_checkout"] = True
    (tmp_path / readme_setup.RECORD).write_text(json.dumps(record))
    assert setup_ran_the_readme(block[:3], tmp_path) and not setup_ran_the_readme(block[1:3], tmp_path)
    # a second setup keeps the existing .venv, says so, and the README line that fails stops it
    (tmp_path / "README.md").write_text((tmp_path / "README.md").read_text().replace("echo $PATH", "exit 3"))
    again = subprocess.run([sys.executable, str(SETUP), "--root", str(tmp_path)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 3 and "exit 3" in again.stderr
    assert "python3 -m venv" not in again.stdout


def test_the_readme_numbers_are_the_committed_results():
    """The README's generated blocks (findings, the source articles' claims) hold what the committed
    results give today: after a reference run or a re-executed notebook, run
    ``python -m tlcourse.courseware.readme`` and commit the README."""
    from tlcourse.courseware import readme

    blocks = readme.blocks_in((ROOT / "README.md").read_text(encoding="utf-8"))
    assert set(blocks) == set(readme.BLOCKS), "every generated block appears in the README once"
    stale = [name for name, body in blocks.items() if body != readme.render(name)]
    assert not stale, f"README blocks {stale} differ from the committed results: run python -m tlcourse.courseware.readme"
