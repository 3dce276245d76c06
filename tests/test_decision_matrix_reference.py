"""The reference run of the decision matrix: its machinery, its smoke setting, and the committed file.

The smoke test runs ``scripts/decision_matrix_reference.py --smoke`` (the reference code path at a
tiny scale, real mirror datasets) into tmp_path, twice, to check that a restart resumes; the last
test checks that the committed reference run has the scale notebook 04 and the advisor claim.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference_smoke import smoke_twice

from tlcourse import models, recipes, strategies
from tlcourse.experiments import advisor, decision_matrix
from tlcourse.experiments import decision_matrix_reference as dmr
from tlcourse.experiments import matrix_reference as ref

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = advisor.reference_path()


# ---------------------------------------------------------------- rows and the progress file


@pytest.mark.parametrize("n", [1, 3, 4, 5, 17, 1000])
def test_bits_round_trip(n):
    flags = [bool((i * 7) % 3) for i in range(n)]
    packed = ref.bits(flags)
    assert len(packed) == (n + 3) // 4
    assert ref.unbits(packed, n) == flags


def test_a_torn_last_line_is_skipped_and_the_rest_kept(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    ref.append_row(path, {"key": [1], "accuracy": 0.5})
    ref.append_row(path, {"key": [2], "accuracy": 0.75})
    with path.open("a") as f:
        f.write('{"key": [3], "accur')  # a run killed while writing
    assert [r["key"] for r in ref.read_rows(path)] == [[1], [2]]
    assert ref.read_rows(tmp_path / "missing.jsonl") == []


# ---------------------------------------------------------------- the strategies are what they claim


def test_partial_fine_tuning_on_cached_maps_equals_the_frozen_network():
    scale = ref.Scale(size=64)
    torch.manual_seed(0)
    model = models.build_backbone(scale.backbone, 2)  # what run_trained's partial_ft trains: recipes.top_stages
    module, groups = recipes.top_stages(model, ref.cut_stage(scale), 1e-4, scale.head_lr)
    x = torch.randn(3, 3, 64, 64)
    pooled, maps = ref.stage_activations(model, x, ref.cut_stage(scale))
    model.eval()
    with torch.inference_mode():
        assert torch.allclose(module(maps), model(x), atol=1e-5)
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(pooled[models.backbone_spec(model).stage_names[-1]], pre_logits, atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("blocks.5", "blocks.6", "conv_head", "bn2", "classifier")) for n in trainable)
    assert [g["lr"] for g in groups] == [1e-4, scale.head_lr]


def test_top_stages_of_a_classic_backbone_equal_the_frozen_network():
    # Notebook 04 runs with BACKBONE = "resnet18" too: its top stages come from tlcourse.stages.
    model = models.build_backbone("resnet18", 2, pretrained=False).eval()
    cut = ref.cut_stage(ref.Scale(backbone="resnet18"))
    x = torch.randn(2, 3, 64, 64)
    _, maps = ref.stage_activations(model, x, cut)
    with torch.inference_mode():
        assert torch.allclose(ref.TopStages(model, cut)(maps), model(x), atol=1e-5)


def _toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 4, generator=g) + 2.0 * y[:, None].float()
    return x, y


def test_the_recipe_stops_on_a_plateau_and_restores_the_best_weights():
    module = torch.nn.Linear(4, 2)
    # lr 0: validation never improves after epoch 1, so patience 2 stops after epoch 3
    r = recipes.train(module, [{"params": list(module.parameters()), "lr": 0.0}], _toy(), _toy(seed=1),
                      max_epochs=10, patience=2, batch_size=16, seed=0)
    assert (r.epochs, r.best_epoch, r.stopped_early) == (3, 1, True)
    module = torch.nn.Linear(4, 2)
    r = recipes.train(module, [{"params": list(module.parameters()), "lr": 0.05}], _toy(), _toy(seed=1),
                      max_epochs=2, patience=5, batch_size=16, seed=0, test=_toy(seed=2))
    assert r.epochs == 2 and not r.stopped_early, "running out of epochs is not a plateau"
    accs = [e["val_acc"] for e in r.history.epochs]
    assert r.val_accuracy == accs[r.best_epoch - 1] == max(accs)
    assert r.accuracy == float(r.correct.float().mean()) and len(r.correct) == 64 and r.device == "cpu"


def test_probes_choose_c_on_validation_and_probe_early_is_the_best_earlier_stage():
    x, y = _toy(80)
    feats = {"a": x[:, :1], "b": x, "last": x[:, :2]}
    rows = ref.probe_stages({k: v[:40] for k, v in feats.items()}, y[:40], {k: v[40:60] for k, v in feats.items()},
                            y[40:60], {k: v[60:] for k, v in feats.items()}, y[60:], cs=(0.01, 1.0), seed=0)
    assert [r["stage"] for r in rows] == ["a", "b", "last"]
    assert all(r["C"] in (0.01, 1.0) and len(ref.unbits(r["correct"], r["n_test"])) == 20 for r in rows)
    rows[0]["val_accuracy"], rows[1]["val_accuracy"] = 0.9, 0.8
    chosen = ref.choose_probes(rows, "last")
    assert chosen["probe_last"]["stage"] == "last" and chosen["probe_early"]["stage"] == "a"


# ---------------------------------------------------------------- verdicts and the advisor's evidence


def _table(**values):
    return {s: {"mean": sum(v) / len(v), "values": v} for s, v in values.items()}


def test_textbook_verdicts_say_win_tie_or_another_wins():
    q = "small_similar"  # the textbook: probe_last
    win = decision_matrix.textbook_verdict(q, _table(probe_last=[0.90, 0.91, 0.92], full_ft=[0.80, 0.81, 0.79]))
    tie = decision_matrix.textbook_verdict(q, _table(probe_last=[0.90, 0.80, 0.85], full_ft=[0.86, 0.88, 0.81]))
    lose = decision_matrix.textbook_verdict(q, _table(probe_last=[0.70, 0.71, 0.72], full_ft=[0.80, 0.81, 0.79]))
    assert win[0] == "textbook" and win[1].startswith("the textbook's choice wins") and "CI" in win[1]
    assert tie[0] == "tie" and tie[1].startswith("ties within noise")
    assert lose[0] == "other" and "another strategy wins (full_ft)" in lose[1] and "better than probe_last" in lose[1]
    one = decision_matrix.textbook_verdict(q, _table(probe_last=[0.70], full_ft=[0.90]))
    assert one[0] == "tie" and "one seed" in one[1]


def test_the_advisor_quotes_the_reference_with_its_scale(tmp_path: Path):
    rows = [dict(quadrant="large_dissimilar", dataset="X-rays", n_per_class=1000, n_test=468, strategy=s, seed=k,
                 accuracy=a + 0.01 * k) for s, a in (("full_ft", 0.95), ("probe_last", 0.85)) for k in range(3)]
    path, _ = decision_matrix.save_results(rows, tmp_path / "ref.json", {"backbone": "efficientnet_lite0", "size": 96})
    evidence = advisor.reference_evidence(path)
    assert list(evidence) == ["large_dissimilar"]
    e = evidence["large_dissimilar"]
    assert e.outcome == "textbook" and e.winner == "full_ft"
    assert "1000 images/class" in e.scale and "3 seeds" in e.scale and "96 px" in e.scale
    text = str(advisor.recommend(1214, 0.3, evidence=evidence))
    assert "measured (reference run:" in text and "1000 images/class" in text
    assert "reference run" not in str(advisor.recommend(50, 0.3, evidence=evidence)), "no evidence for that quadrant"
    legacy = str(advisor.recommend(1214, 0.3, measured={"large_dissimilar": "probe_last"}))
    assert "may be far below" in legacy, "another run's winner is never passed off as evidence"


def test_the_boundary_is_calibrated_between_the_calibration_sets():
    assert advisor.calibrate_distance([0.19], [0.36]) == pytest.approx(0.275)
    with pytest.raises(ValueError, match="overlap"):
        advisor.calibrate_distance([0.3], [0.2])
    assert not set(advisor.CALIBRATION_SETS["similar"]) & set(advisor.CHECK_SETS["similar"])
    assert not set(advisor.CALIBRATION_SETS["dissimilar"]) & set(advisor.CHECK_SETS["dissimilar"])
    assert advisor.distance_to_score(advisor.DISTANCE_AT_HALF) == pytest.approx(0.5)


# ---------------------------------------------------------------- the script, end to end


def test_smoke_run_writes_the_reference_format_and_resumes(tmp_path: Path):
    doc = smoke_twice(dmr.main, tmp_path).doc
    assert doc["meta"]["complete"] and doc["meta"]["smoke"] and "--smoke" in doc["meta"]["command"]
    assert doc["meta"]["hardware"]["packages"]["torch"] and doc["meta"]["backbone_lr"]
    keys = {(r["quadrant"], r["strategy"]) for r in doc["rows"]}
    assert keys == {(q, s) for q in strategies.QUADRANTS for s in strategies.STRATEGIES}
    for r in doc["rows"]:
        assert len(ref.unbits(r["correct"], r["n_test"])) == r["n_test"]
        if r["strategy"] in strategies.TRAINED:
            assert 1 <= r["epochs_used"] <= r["max_epochs"] and isinstance(r["stopped_on_plateau"], bool)
    assert {p["stage"] for p in doc["stage_probes"]} == set(models.backbone_spec("efficientnet_lite0").stage_names)


def test_one_domain_runs_only_its_own_subsets_and_the_seeds_stay_balanced():
    both, one = dmr.plan(ref.REFERENCE_SCALE), dmr.plan(ref.REFERENCE_SCALE, ["dissimilar"])
    assert one == [step for step in both if step[1] == "dissimilar"] and len(both) == 2 * len(one)
    assert dmr.plan(ref.REFERENCE_SCALE, ["similar"], [3, 4]) == [("small", "similar", 3), ("small", "similar", 4)]
    assert dmr.parse_args(["--domain", "similar"]).domain == "similar" and dmr.parse_args([]).domain is None
    with pytest.raises(SystemExit):
        dmr.parse_args(["--domain", "medical"])


@pytest.mark.reference_data
def test_the_committed_reference_run_has_the_textbook_scale():
    doc = decision_matrix.load_results(REFERENCE)
    meta, rows = doc["meta"], doc["rows"]
    assert meta["complete"] and not meta["smoke"] and meta["command"].startswith("TLCOURSE_MIRROR=")
    assert meta["hardware"]["cpu"] and meta["run_seconds_total"] > 0
    for q in strategies.QUADRANTS:
        mine = [r for r in rows if r["quadrant"] == q]
        assert {r["strategy"] for r in mine} == set(strategies.STRATEGIES), q
        for s in strategies.STRATEGIES:
            seeds = {r["seed"] for r in mine if r["strategy"] == s}
            assert len(seeds) >= (3 if q.startswith("large") else 5), (q, s)
        if q.startswith("large"):
            assert min(r["n_per_class"] for r in mine) >= strategies.SIZE_BOUNDARY
    assert meta["size"] >= 96
