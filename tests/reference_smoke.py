"""The smoke run every reference-run test makes: the real code path at ``--smoke`` scale on the course
mirror's datasets, run twice into a temporary folder so the second run checks that a restart resumes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tlcourse.experiments.reference_runs import read_rows


def needs_mirror(*archives: str) -> Path:
    """The course mirror (``TLCOURSE_MIRROR``); the test is skipped when it lacks one of ``archives``."""
    mirror = os.environ.get("TLCOURSE_MIRROR")
    if not mirror or not all((Path(mirror) / a).is_file() for a in archives):
        pytest.skip("set TLCOURSE_MIRROR to the course mirror (CI: /work/shared/datasets)")
    return Path(mirror)


class SmokeRun(NamedTuple):
    """The first run's result document, its result and progress files, and the command line both runs used."""

    doc: dict[str, Any]
    out: Path
    progress: Path
    argv: list[str]


def smoke_twice(main: Callable[[Sequence[str]], int], tmp_path: Path, archive: str = "cifar10-jpg.zip") -> SmokeRun:
    """Run a reference run's ``main`` with ``--smoke`` into ``tmp_path`` (skipped without ``archive`` in the
    mirror), then again: the restart must find every run done and add no row to the progress file."""
    needs_mirror(archive)
    out, progress = tmp_path / "result.json", tmp_path / "progress.jsonl"
    argv = ["--smoke", "--out", str(out), "--progress", str(progress)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    rows = len(read_rows(progress))
    assert rows > 0 and main(argv) == 0
    assert len(read_rows(progress)) == rows, "a restart must skip the finished runs"
    return SmokeRun(doc, out, progress, argv)
