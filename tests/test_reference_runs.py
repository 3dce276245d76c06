"""tlcourse.experiments.reference_runs: the progress file, the runner that resumes, the result's meta."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

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


def test_every_reference_run_takes_the_shared_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """reference_arguments gives each run --out/--progress/--smoke and the optional --threads/--device/--deadline;
    progress_path and open_runner find the progress file beside the build folder; run_meta opens the meta."""
    from tlcourse.experiments import articles_reference, bf16_parity, decision_matrix_reference, finetune_reference

    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path))
    dm = decision_matrix_reference.parse_args([])
    assert (dm.out, dm.progress, dm.smoke, dm.threads, dm.device, dm.deadline) == (
        rr.RESULTS / "04_decision_matrix_reference.json", None, False, 1, "auto", None)
    assert rr.progress_path(dm, "decision_matrix_reference") == (
        tmp_path / "decision_matrix_reference" / "04_decision_matrix_reference.jsonl")
    ft = finetune_reference.parse_args(["--smoke", "--seeds", "7", "--device", "cpu", "--deadline", "23:58",
                                        "--out", str(tmp_path / "ft.json"), "--threads", "2"])
    assert (ft.smoke, ft.seeds, ft.device, ft.deadline, ft.threads) == (True, 7, "cpu", "23:58", 2)
    threads = torch.get_num_threads()
    try:
        runner = rr.open_runner(ft, "finetune_reference")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert runner.progress == tmp_path / "finetune_reference" / "ft.jsonl" and runner.deadline is not None
    art = articles_reference.parse_args(["--progress", str(tmp_path / "p.jsonl"), "--set", "n_000=3"])
    assert art.set == ["n_000=3"] and not hasattr(art, "device") and art.out == rr.RESULTS / "articles_reference.json"
    assert rr.progress_path(art, "articles_reference") == tmp_path / "p.jsonl"
    bf = bf16_parity.parse_args([])
    assert bf.seeds == 3 and not hasattr(bf, "threads") and not hasattr(bf, "deadline")
    with pytest.raises(SystemExit):
        bf16_parity.parse_args(["--deadline", "23:58"])
    meta = rr.run_meta("scripts/x.py", ["--smoke"], 2, "cpu", runner, 12.4)
    assert list(meta) == ["command", "written", "hardware", "wall_seconds_this_session", "run_seconds_total"]
    assert meta["command"].endswith("python scripts/x.py --smoke") and meta["wall_seconds_this_session"] == 12


def test_a_result_is_its_json_and_a_csv_beside_it(tmp_path: Path) -> None:
    rows = [{"arm": "a", "seed": 0, "accuracy": 0.5, "key": [0]}, {"arm": "b", "seed": 1, "accuracy": 0.75}]
    assert rr.csv_text(rows, ["arm", "accuracy"]).splitlines() == ["arm,accuracy", "a,0.5", "b,0.75"]
    path = tmp_path / "deep" / "r.json"
    table = rr.write_result(path, {"meta": {"n": np.float32(2)}, "rows": rows}, "x\n1\n")
    assert table == tmp_path / "deep" / "r.csv" and table.read_text() == "x\n1\n"
    assert json.loads(path.read_text()) == {"meta": {"n": 2.0}, "rows": rows}
