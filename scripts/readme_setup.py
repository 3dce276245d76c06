"""Set up ``.venv`` by running the README's own install commands, as a learner without make would.

    python3 scripts/readme_setup.py        # what ``make setup`` runs

The README's "Without make" block starts with the commands that create ``.venv`` and install the
course into it. This script reads them from the README and runs each with bash, in a learner's
shell: no virtual environment on PATH, none of this process's ``VIRTUAL_ENV``. So every ``make
setup`` in a fresh clone (every CI run) is a run of the README's commands exactly as written, and
``tests/test_readme_commands.py`` does not repeat the gigabytes of a torch install to check them.
It reads the record this script writes, ``.venv/.tlcourse-readme-setup.json``: which lines ran,
whether ``.venv`` was new and whether the checkout was as cloned. Unless the record shows the
README's present lines run into a new ``.venv`` of a clean clone, the test installs into a fresh
clone itself.

Two things differ from a learner's shell, and neither changes what is installed: pip does not
byte-compile (``make setup`` compiles afterwards, on every core), and ``PYTHON=...`` given to make
replaces the README's ``python3`` (the record then says so, and the test does the full install).
Standard library only: it runs before the course exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADING = "Without make (Windows, macOS)"
RECORD = Path(".venv") / ".tlcourse-readme-setup.json"  # in the checkout


def readme_block(text: str, heading: str = HEADING, language: str = "bash") -> list[str]:
    """The command lines of the first ``language`` code block after the ``## heading``."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(rf"```{language}\n(.*?)```", section, re.S)
    if not block:
        raise SystemExit(f"README.md has no {language} block under '## {heading}'")
    return [line for line in block.group(1).splitlines() if line.strip()]


def install_lines(lines: list[str]) -> list[str]:
    """The lines before the first that runs the course: those that create and fill ``.venv``."""
    first_use = next(i for i, line in enumerate(lines) if " -m tlcourse" in line)
    return lines[:first_use]


def learner_env(root: Path) -> dict[str, str]:
    """This process's environment as a learner's shell would have it: no virtual environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venv_bin = str(root / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    # pip does not byte-compile: make setup compiles afterwards on every core. (PIP_COMPILE=0, since
    # pip reads PIP_NO_COMPILE=1 as "compile": an install with it left every file of torch/ compiled.)
    env.pop("PIP_NO_COMPILE", None)
    env["PIP_COMPILE"] = "0"
    return env


def clean_checkout(root: Path) -> bool:
    """Whether ``root`` is a git checkout as cloned: nothing modified, untracked or ignored in it."""
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=root, capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and not done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="python3", help="the interpreter that stands for the README's python3")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this script's)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    lines = install_lines(readme_block((root / "README.md").read_text(encoding="utf-8")))
    fresh = not (root / ".venv" / "bin" / "python").exists()
    clean = clean_checkout(root)
    ran = []
    for line in lines:
        if line.startswith("python3 -m venv ") and not fresh:
            continue  # an existing .venv is kept (the record says it was not new)
        if line.startswith("python3 ") and args.python != "python3":
            line = args.python + line[len("python3"):]
        start = time.monotonic()
        print(f"[setup] $ {line}", flush=True)
        done = subprocess.run(["bash", "-c", line], cwd=root, env=learner_env(root))
        if done.returncode != 0:
            print(f"[setup] the README's command failed (exit {done.returncode}): {line}", file=sys.stderr)
            return done.returncode
        ran.append({"line": line, "seconds": round(time.monotonic() - start, 1)})
    (root / RECORD).parent.mkdir(exist_ok=True)
    record = {"clean_checkout": clean, "fresh_venv": fresh, "ran": ran}
    (root / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
