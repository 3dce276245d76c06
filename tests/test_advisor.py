"""The decision-matrix advisor (tlcourse.experiments.advisor) and the saved results of notebook 04 (tlcourse.experiments.decision_matrix)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from tlcourse import strategies
from tlcourse.experiments import advisor, decision_matrix
from tlcourse.experiments.advisor import recommend
from tlcourse.strategies import SIMILARITY_BOUNDARY, SIZE_BOUNDARY

# ---------------------------------------------------------------- recommend: quadrants and boundaries

@pytest.mark.parametrize("n, similarity, quadrant, strategy", [
    (50, 0.9, "small_similar", "probe_last"),
    (5000, 0.9, "large_similar", "full_ft"),
    (50, 0.1, "small_dissimilar", "probe_early"),
    (5000, 0.1, "large_dissimilar", "full_ft"),
])
def test_each_quadrant_gets_its_textbook_strategy(n, similarity, quadrant, strategy):
    rec = recommend(n, similarity)
    assert (rec.quadrant, rec.strategy) == (quadrant, strategy)
    assert rec.explanation and rec.strategy in strategies.STRATEGIES
    assert rec.strategy == strategies.TEXTBOOK[quadrant].choice, "the advisor and the measured grid share the textbook"
    assert rec.alternatives == strategies.TEXTBOOK[quadrant].strategies[1:]
    assert rec.explanation == strategies.TEXTBOOK[quadrant].why


def test_the_size_boundary_belongs_to_large():
    assert recommend(SIZE_BOUNDARY - 1, 0.9).quadrant == "small_similar"
    assert recommend(SIZE_BOUNDARY, 0.9).quadrant == "large_similar"


def test_the_similarity_boundary_belongs_to_similar():
    assert recommend(10, SIMILARITY_BOUNDARY).quadrant == "small_similar"
    assert recommend(10, np.nextafter(SIMILARITY_BOUNDARY, 0)).quadrant == "small_dissimilar"


def test_boundaries_can_be_moved():
    assert recommend(300, 0.4, size_boundary=200, similarity_boundary=0.3).quadrant == "large_similar"


@pytest.mark.parametrize("n, similarity", [(0, 0.5), (-3, 0.5), (10, -0.01), (10, 1.01), (10, float("nan"))])
def test_impossible_inputs_are_refused(n, similarity):
    with pytest.raises(ValueError):
        recommend(n, similarity)


def test_a_measured_winner_is_reported_with_the_advice():
    rec = recommend(50, 0.9, measured={"small_similar": "full_ft"})
    assert rec.measured_winner == "full_ft"
    assert "not the textbook" in str(rec)
    assert recommend(50, 0.9).measured_winner is None


# ---------------------------------------------------------------- similarity_score

def _tiny_bn_model() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model.eval()
    return model


def test_data_matching_the_running_statistics_scores_near_one_and_shifted_data_lower():
    torch.manual_seed(0)
    model = _tiny_bn_model()
    x = torch.randn(64, 3, 12, 12)
    with torch.no_grad():  # make the stored statistics exactly those of x
        pre = model[0](x)
        model[1].running_mean.copy_(pre.mean((0, 2, 3)))
        model[1].running_var.copy_(pre.var((0, 2, 3), unbiased=False))
    same = advisor.similarity_score(model, TensorDataset(x, torch.zeros(64)), max_images=64)
    shifted = advisor.similarity_score(model, TensorDataset(x * 3 + 2, torch.zeros(64)), max_images=64)
    assert same.distance == pytest.approx(0.0, abs=1e-6) and same.score == pytest.approx(1.0, abs=1e-5)
    assert shifted.score < 0.5 < same.score
    assert same.n_images == 64 and len(same.per_layer) == 1


def test_score_mapping_is_monotone_and_half_at_the_calibration_distance():
    assert advisor.distance_to_score(0.0) == 1.0
    assert advisor.distance_to_score(advisor.DISTANCE_AT_HALF) == pytest.approx(0.5)
    assert advisor.distance_to_score(0.1) > advisor.distance_to_score(0.4) > 0


def test_max_images_limits_the_sample():
    model = _tiny_bn_model()
    res = advisor.similarity_score(model, TensorDataset(torch.randn(30, 3, 8, 8), torch.zeros(30)), max_images=10)
    assert res.n_images == 10


# ---------------------------------------------------------------- advise_folder

def _make_folder(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / next(iter(counts)) / "notes.txt").write_text("not an image")
    return root


def test_advise_folder_counts_classes_and_uses_the_smallest(tmp_path: Path):
    folder = _make_folder(tmp_path / "mine", {"cats": 7, "dogs": 4})
    seen = []
    advice = advisor.advise_folder(folder, scorer=lambda ds: seen.append(len(ds)) or 0.8)
    assert advice.counts == {"cats": 7, "dogs": 4}
    assert advice.n_per_class == 4 and advice.skipped == 1
    assert seen == [11], "the scorer sees every usable image"
    assert advice.recommendation.quadrant == "small_similar" and advice.similarity == 0.8
    assert "cats: 7" in str(advice)


def test_advise_folder_passes_boundaries_and_scores_with_a_real_model(tmp_path: Path):
    folder = _make_folder(tmp_path / "mine", {"a": 3, "b": 3})
    advice = advisor.advise_folder(folder, scorer=lambda ds: 0.2, size_boundary=3)
    assert advice.recommendation.quadrant == "large_dissimilar"
    model = _tiny_bn_model()
    model.tlcourse_backbone = "efficientnet_lite0"  # its preprocessing: mean = std = 0.5
    real = advisor.advise_folder(folder, model=model)
    assert 0.0 < real.similarity <= 1.0


# ---------------------------------------------------------------- figures and saved results

def _rows():
    rows = []
    for q in decision_matrix.QUADRANTS:
        for k, s in enumerate(decision_matrix.STRATEGIES):
            for seed in (0, 1, 2):  # the course gives no interval from fewer than 3 seeds
                acc = 0.5 + 0.08 * k + 0.01 * seed if q != "small_similar" else 0.9 - 0.08 * k
                rows.append(dict(quadrant=q, domain="d", dataset="x", n_per_class=10, strategy=s, seed=seed,
                                 accuracy=acc, seconds=1.0))
    return rows


def test_summary_winners_and_round_trip(tmp_path: Path):
    rows = _rows()
    summary = decision_matrix.summarize(rows)
    assert summary["large_similar"]["scratch"]["mean"] == pytest.approx(0.5 + 0.32 + 0.01)
    assert summary["large_similar"]["scratch"]["std"] == pytest.approx(0.01)  # sample std of 0, 0.01, 0.02
    best = decision_matrix.winners(summary)
    assert best["small_similar"] == "probe_last" and best["large_dissimilar"] == "scratch"
    json_path, csv_path = decision_matrix.save_results(rows, tmp_path / "m.json", meta={"size": 64})
    loaded = decision_matrix.load_results(json_path)
    assert loaded["rows"] == rows and loaded["meta"] == {"size": 64}
    assert csv_path.read_text().splitlines()[0].startswith("quadrant,domain")
    (tmp_path / "bad.json").write_text(json.dumps({"meta": {}}))
    with pytest.raises(ValueError):
        decision_matrix.load_results(tmp_path / "bad.json")


def test_matrix_figure_highlights_the_quadrant():
    fig = advisor.matrix_figure("large_dissimilar", point=(3000, 0.2), datasets={"x": (100, 0.7)},
                                measured={"large_dissimilar": "scratch"})
    ax = fig.axes[0]
    highlighted = [p for p in ax.patches if p.get_linewidth() == 3]
    assert len(highlighted) == 1 and highlighted[0].get_x() == SIZE_BOUNDARY and highlighted[0].get_y() == 0


def test_the_widget_panel_follows_the_dropdown():
    pytest.importorskip("ipywidgets")
    panel = advisor.advisor_panel({"photos": (2000.0, 0.8)})
    choice, n_slider, s_slider = panel.children[0].children
    out = panel.children[1]
    assert "small & similar" in out.outputs[0]["text"]  # the default starting point: 100 images, 0.5
    choice.value = "photos"
    assert (round(n_slider.value), s_slider.value) == (2000, 0.8)
    # The output is replaced, not appended to: the new recommendation and one figure.
    assert [o["output_type"] for o in out.outputs] == ["stream", "display_data"]
    assert "large & similar" in out.outputs[0]["text"]
    assert "image/png" in out.outputs[1]["data"]


# ---------------------------------------------------------------- the strategies themselves

def test_summary_uses_the_sample_std_and_a_t_interval():
    rows = [dict(quadrant="small_similar", strategy="full_ft", seed=s, accuracy=a) for s, a in enumerate((0.6, 0.7, 0.8))]
    entry = decision_matrix.summarize(rows)["small_similar"]["full_ft"]
    assert entry["std"] == pytest.approx(0.1)  # ddof=1, not the population std (0.0816)
    assert entry["low"] < 0.7 < entry["high"] and entry["high"] - 0.7 == pytest.approx(0.2484, abs=1e-3)
    single = decision_matrix.summarize(rows[:1])["small_similar"]["full_ft"]
    assert math.isnan(single["std"]) and math.isnan(single["low"]) and single["mean"] == 0.6
