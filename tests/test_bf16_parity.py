"""tlcourse.experiments.bf16_parity (scripts/bf16_parity.py): float32 vs the course's bf16 default, trained and scored on the same images.

The smoke run goes through the real code path (Alien vs Predator from the mirror, ResNet-18, the
course's ``fit``) in seconds and resumes; the committed reference run must have the scale and the
answer the README quotes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference_smoke import needs_mirror

from tlcourse import runtime
from tlcourse.experiments import bf16_parity as script
from tlcourse.experiments import reference_runs as ref

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tlcourse/experiments/results/bf16_parity.json"


def test_each_run_asks_for_its_precision_explicitly_whatever_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for capable in (True, False):
        monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda capable=capable: capable)
        for precision in script.PRECISIONS:
            s = script.settings_for(precision)
            assert s.amp_dtype == (torch.bfloat16 if precision == "bf16" else None)
            with s.autocast():
                assert torch.is_autocast_enabled("cpu") is (precision == "bf16")


def test_smoke_run_scores_both_precisions_on_the_same_images_and_resumes(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    needs_mirror("alien-vs-predator.zip")
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "build"))
    out, progress = tmp_path / "parity.json", tmp_path / "rows.jsonl"
    doc = script.main(["--smoke", "--out", str(out), "--progress", str(progress)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert {r["backbone"] for r in doc["rows"]} == set(script.RUNS)
    for backbone in script.RUNS:
        rows = {r["precision"]: r for r in doc["rows"] if r["backbone"] == backbone}
        assert set(rows) == {"fp32", "bf16"} and rows["fp32"]["n"] == rows["bf16"]["n"] > 0
        assert rows["fp32"]["autocast"] == "None"
        assert rows["bf16"]["autocast"] == "torch.bfloat16"  # asked for explicitly, whatever the CPU has
        for r in rows.values():
            hits = ref.unbits(r["correct"], r["n"])
            assert sum(hits) / r["n"] == pytest.approx(r["accuracy"])
        (seed,) = doc["summary"][backbone]["per_seed"]
        assert seed["diff"] == pytest.approx(rows["bf16"]["accuracy"] - rows["fp32"]["accuracy"])
        assert "one seed" in doc["summary"][backbone]["verdict_over_seeds"]  # never a verdict from one seed

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(script, "run_one", no_training)
    again = script.main(["--smoke", "--out", str(out), "--progress", str(progress)])
    assert again["rows"] == doc["rows"]


@pytest.mark.reference_data
def test_the_committed_run_has_its_scale_and_its_verdicts_follow_the_numbers() -> None:
    doc = json.loads(REFERENCE.read_text())
    meta = doc["meta"]
    assert not meta["smoke"] and meta["size"] == 224 and meta["command"].startswith("TLCOURSE_MIRROR=")
    assert set(meta["runs"]) == {"resnet18", "efficientnet_lite0"} and meta["cpu_supports_bf16"]
    assert {r["autocast"] for r in doc["rows"] if r["precision"] == "bf16"} == {"torch.bfloat16"}
    for backbone, summary in doc["summary"].items():
        assert len(summary["seeds"]) >= 3, backbone
        low, high = summary["over_seeds"]["ci"]
        if low > 0 or high < 0:
            assert "better" in summary["verdict_over_seeds"]
        else:
            assert summary["verdict_over_seeds"].startswith("no measurable difference")
        for s in summary["per_seed"]:
            assert s["fp32_ci"][0] <= s["fp32_acc"] <= s["fp32_ci"][1]
            assert s["bf16_ci"][0] <= s["bf16_acc"] <= s["bf16_ci"][1]
