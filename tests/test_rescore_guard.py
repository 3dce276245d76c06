"""fit scores a folder's test set once: a later call that chooses another candidate on the same
folder must say it would look at the test set a second time, and needs --rescore-test."""

from __future__ import annotations

import json
from pathlib import Path

from tlcourse.__main__ import USER_ERRORS, build_parser
from tlcourse.experiments.own_data import report


def _earlier(out: Path, chosen: str, run_key: str = "k1") -> None:
    (out / "report.json").write_text(json.dumps({"chosen": chosen, "test_accuracy": 0.9, "extra": {"run_key": run_key}}))


def test_a_new_choice_on_a_scored_test_set_is_a_second_look(tmp_path: Path) -> None:
    assert report._second_look(tmp_path, "k1", "probe") is None, "no earlier report: a first look"
    _earlier(tmp_path, "probe")
    assert report._second_look(tmp_path, "k1", "probe") is None, "the same choice scores the same test set again"
    assert report._second_look(tmp_path, "k2", "fine-tune") is None, "another folder or seed: another test set"
    assert report._second_look(tmp_path, "k1", "fine-tune")["chosen"] == "probe"
    assert report._second_look(tmp_path, "", "fine-tune") is None


def test_the_command_line_refuses_it_readably_unless_asked() -> None:
    assert issubclass(report.TestAlreadyScored, USER_ERRORS), "a message, not a traceback"
    args = build_parser().parse_args(["fit", "photos", "--rescore-test"])
    assert args.rescore_test is True and build_parser().parse_args(["fit", "photos"]).rescore_test is False
