"""tlcourse.experiments.reference_runs: the progress file, the runner that resumes, the result's meta."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tlcourse.experiments import reference_runs as rr


def test_bits_round_trip_any_length() -> None:
    for n in (1, 3, 4, 5, 17):
        flags = [(i * 7) % 3 == 0 for i in range(n)]
        assert rr.unbits(rr.bits(flags), n) == flags
    with pytest.raises(ValueError, match="does not hold"):
        rr.unbits("ff", 3)


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rr.append_row(path, {"key": [1]})
    with path.open("a") as f:
        f.write('{"key": [2], "acc')  # the run was killed mid-write
    assert [r["key"] for r in rr.read_rows(path)] == [[1]]


def test_the_runner_resumes_and_respects_the_deadline(tmp_path: Path) -> None:
    calls: list[int] = []

    def job(i: int):
        return lambda: calls.append(i) or {"accuracy": i / 10}

    runner = rr.Runner(tmp_path / "p.jsonl")
    assert runner.run([0], "kind", job(0), {"seed": 0})["accuracy"] == 0.0
    again = rr.Runner(tmp_path / "p.jsonl")
    assert again.run([0], "kind", job(99), {"seed": 0})["seed"] == 0 and calls == [0], "finished work is not redone"
    assert again.eta(["kind", "kind"]).endswith("min left)") and again.eta(["new"]).startswith("unknown")
    late = rr.Runner(tmp_path / "p.jsonl", deadline=time.time() - 1)
    assert late.run([1], "kind", job(1)) is None and late.skipped == [[1]] and calls == [0]


def test_deadline_and_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    assert rr.deadline_at(None) is None
    assert 0 < rr.deadline_at("00:00") - time.time() <= 86400
    with pytest.raises(ValueError, match="HH:MM"):
        rr.deadline_at("soon")
    monkeypatch.setenv("TLCOURSE_MIRROR", "/home/someone/datasets")
    cmd = rr.command_line("scripts/x.py", ["--out", "a b.json"])
    assert cmd == "TLCOURSE_MIRROR=<mirror> python scripts/x.py --out 'a b.json'" and "someone" not in cmd
    hw = rr.hardware(1, "cpu")
    assert hw["device"] == "cpu" and hw["packages"]["torch"] and hw["torch_threads"] == 1
