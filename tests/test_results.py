"""Profiles, recorded metrics and the threshold checks CI applies to them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tlcourse.courseware import results as R


def test_resolve_profile_applies_overrides_that_are_set():
    table = {"ci": {"n": 10, "epochs": 1}, "default": {"n": 100, "epochs": 5}}
    assert R.resolve_profile("default", table, n=None, epochs=2) == {"n": 100, "epochs": 2}
    with pytest.raises(ValueError, match="profiles: ci, default"):
        R.resolve_profile("huge", table)
    with pytest.raises(ValueError, match="Unknown knob"):
        R.resolve_profile("ci", table, lr=0.1)


def test_default_profile_follows_the_environment(monkeypatch):
    monkeypatch.delenv(R.PROFILE_ENV, raising=False)
    assert R.default_profile() == "default"
    monkeypatch.setenv(R.PROFILE_ENV, "ci")
    assert R.default_profile() == "ci"


def test_record_merges_and_converts_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path))
    R.record("notebooks/01_data_loading.ipynb", {"acc": np.float32(0.5), "n": torch.tensor(3)}, profile="ci")
    rec = R.record("01_data_loading", {"secs": 1.5, "table": [{"w": np.int64(2)}]})
    on_disk = json.loads((tmp_path / "metrics" / "01_data_loading.json").read_text())
    assert on_disk == rec
    assert on_disk["metrics"] == {"acc": 0.5, "n": 3, "secs": 1.5, "table": [{"w": 2}]}
    assert on_disk["profile"] == "ci"
    assert R.load_metrics("01_data_loading")["n"] == 3
    with pytest.raises(TypeError, match="Cannot record"):
        R.record("x", {"bad": object()})


def test_check_metrics_reports_each_failure():
    metrics = {"acc": 0.8, "dups": 2, "secs": 30}
    assert R.check_metrics(metrics, {"acc": {"min": 0.7}, "dups": {"equals": 2}, "secs": {"max": 60}}) == []
    failures = R.check_metrics(metrics, {"acc": {"min": 0.9}, "dups": {"equals": 3}, "gone": {"min": 0}})
    assert len(failures) == 3 and "below the minimum" in failures[0] and "not recorded" in failures[2]
    with pytest.raises(ValueError, match="unknown keys"):
        R.check_metrics(metrics, {"acc": {"atleast": 1}})


def test_an_interval_is_recorded_with_its_bounds(tmp_path, monkeypatch):
    from tlcourse.evaluation import accuracy_ci

    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path))
    R.record("nb", {"acc_ci": accuracy_ci(90, 100)})
    stored = R.load_metrics("nb")["acc_ci"]
    assert stored["value"] == 0.9 and stored["low"] < 0.9 < stored["high"] and stored["n"] == 100
