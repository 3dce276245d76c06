"""The reference run of notebook 02's comparisons: its design's power, its smoke run (the reference
code path on a tiny CIFAR-10 subset, twice, to check the format and that a restart resumes), and the
comparisons and figure read from a result file."""

from __future__ import annotations

import json
from pathlib import Path

from reference_smoke import smoke_twice

from tlcourse.experiments import finetune_reference as ftr


def test_the_mde_shrinks_with_more_seeds_and_test_images():
    small, big = ftr.design_mde(ftr.Design(seeds=3)), ftr.design_mde(ftr.Design(seeds=10, test_per_class=1000))
    assert big["seeds_effect_size"] < small["seeds_effect_size"] and big["paired_mde"] < small["paired_mde"]
    assert ftr.design_mde(ftr.REFERENCE)["n_test"] >= 2000 and ftr.REFERENCE.seeds >= 5
    assert ftr.REFERENCE.train_per_class >= 500


def test_each_comparison_changes_one_arm_setting():
    for c in ftr.COMPARISONS:
        a, b = ftr.ARMS[c["a"]], ftr.ARMS[c["b"]]
        changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
        assert len(changed) == 1, f"{c['key']} changes {changed}"


def test_smoke_run_writes_the_format_resumes_and_compares(tmp_path: Path):
    doc, out, _, _ = smoke_twice(ftr.main, tmp_path)
    meta = doc["meta"]
    assert meta["complete"] and meta["smoke"] and "--smoke" in meta["command"]
    assert meta["train_val_overlap"] == 0 and meta["design_mde"]["n_test"] == meta["n_test"]
    assert {"hardware", "written", "wall_seconds_this_session", "runs_hit_cap"} <= set(meta)
    assert len(doc["rows"]) == ftr.SMOKE.seeds * len(ftr.ARMS)
    assert out.with_suffix(".csv").read_text().splitlines()[0].startswith("arm,seed,accuracy")
    found = ftr.comparisons(doc)
    assert [c["key"] for c in found] == [c["key"] for c in ftr.COMPARISONS]
    for c in found:
        assert "verdict" in c and ("paired" in c or c["n_seeds"] == 0)
    fig = ftr.forest_figure(doc)
    assert fig.axes[0].get_xlabel().startswith("difference")


def test_comparisons_leave_collapsed_runs_out():
    design = ftr.asdict(ftr.SMOKE)
    rows = [dict(arm=arm, seed=s, accuracy=0.5 + 0.1 * s + (0.05 if arm == "fine_tune" else 0), n_test=4,
                 correct="f" if arm == "fine_tune" else "7", collapsed=arm == "frozen" and s == 0)
            for arm in ftr.ARMS for s in range(3)]
    doc = {"meta": {"design": design, "design_mde": ftr.design_mde(ftr.SMOKE)}, "rows": rows}
    first = ftr.comparisons(doc)[0]
    assert first["key"] == "frozen_vs_fine_tune" and first["collapsed"] == 1 and first["n_seeds"] == 2
    assert [p["seed"] for p in first["paired"]] == [1, 2]


def test_the_committed_reference_run_has_the_scale_the_comparisons_need():
    from tlcourse.experiments import results_file

    doc = json.loads(results_file("02_finetune_reference.json").read_text())
    meta, design = doc["meta"], doc["meta"]["design"]
    assert meta["complete"] and not meta["smoke"] and meta["command"].startswith("TLCOURSE_MIRROR=")
    assert design["train_per_class"] >= 500 and meta["n_test"] >= 2000 and design["seeds"] >= 5
    assert meta["train_val_overlap"] == 0 and meta["runs_hit_cap"] == 0
    assert all(r["stopped_on_plateau"] for r in doc["rows"]) and len(doc["rows"]) == design["seeds"] * len(ftr.ARMS)
    assert all(c["n_seeds"] == design["seeds"] for c in ftr.comparisons(doc))
