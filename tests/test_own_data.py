"""tlcourse.experiments.own_data.scan: both folder layouts, the refusals before any training, duplicates, fingerprints.

Generated folders of small coloured images; no model is built here (a refusal must come first).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlcourse.experiments import own_data
from tlcourse.experiments.own_data import FolderRefused, read_folder
from tlcourse.experiments.own_data import pipeline as own_pipeline


def make_images(folder: Path, counts: dict[str, int], *, seed: int = 0, size: int = 24) -> list[Path]:
    """``folder/<class>/<i>.png``: noise around one colour per class (so classes are learnable)."""
    rng = np.random.default_rng(seed)
    made = []
    for k, (name, n) in enumerate(counts.items()):
        base = np.array([[220, 40, 40], [40, 60, 220], [40, 200, 60], [200, 200, 40]][k % 4])
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
            path = folder / name / f"{i}.png"
            Image.fromarray(pixels).save(path)
            made.append(path)
    return made


def test_flat_folder_is_carved_stratified_and_seeded(tmp_path: Path) -> None:
    make_images(tmp_path / "pets", {"cat": 20, "dog": 15})
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("not an image")
    data = read_folder(tmp_path / "pets", seed=1)
    assert data.layout == "flat" and data.classes == ["cat", "dog"]
    counts = data.counts()
    assert counts["val"] == {"cat": 4, "dog": 3} and counts["test"] == {"cat": 4, "dog": 3}
    assert sum(counts["train"].values()) + 14 == 35
    assert [b.path.name for b in data.bad] == ["notes.txt"]  # skipped and listed
    assert read_folder(tmp_path / "pets", seed=1).split == data.split  # same seed, same carve
    assert read_folder(tmp_path / "pets", seed=2).split != data.split
    assert "carved" in data.notes[0] and "test 7" in data.notes[0]


def test_split_layout_without_test_uses_val_as_test(tmp_path: Path) -> None:
    make_images(tmp_path / "f" / "train", {"alien": 10, "predator": 10})
    make_images(tmp_path / "f" / "validation", {"alien": 3, "predator": 4}, seed=5)
    data = read_folder(tmp_path / "f")
    assert data.layout == "split"
    assert data.counts()["test"] == {"alien": 3, "predator": 4}
    assert all("/validation/" in data.samples[i][0] for i in data.indices("test"))
    assert all("/train/" in data.samples[i][0] for i in data.indices("val"))  # carved from train/
    assert "validation/ is the test set" in data.notes[0]


def test_split_layout_with_all_three_folders_is_used_as_given(tmp_path: Path) -> None:
    for part, seed in (("train", 0), ("val", 1), ("test", 2)):
        make_images(tmp_path / "f" / part, {"a": 4, "b": 4}, seed=seed)
    data = read_folder(tmp_path / "f")
    for part in ("train", "val", "test"):
        assert all(f"/{part}/" in data.samples[i][0] for i in data.indices(part))
        assert len(data.indices(part)) == 8


def test_a_test_copy_of_a_training_image_leaves_the_test_set(tmp_path: Path) -> None:
    train = make_images(tmp_path / "f" / "train", {"a": 6, "b": 6})
    make_images(tmp_path / "f" / "val", {"a": 2, "b": 2}, seed=3)
    leak = tmp_path / "f" / "val" / "b" / "leak.png"
    leak.write_bytes(train[-1].read_bytes())
    data = read_folder(tmp_path / "f")
    assert str(leak) not in [data.samples[i][0] for i in range(len(data.samples))]
    assert any("test copy of a training image" in why for _, why in data.dropped)
    assert len(data.indices("test")) == 4


def test_refuses_a_single_usable_class(tmp_path: Path) -> None:
    make_images(tmp_path / "f", {"only": 12})
    (tmp_path / "f" / "broken").mkdir()
    (tmp_path / "f" / "broken" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FolderRefused, match="at least 2 classes"):
        read_folder(tmp_path / "f")


def test_refuses_a_class_too_small_to_split(tmp_path: Path) -> None:
    make_images(tmp_path / "f", {"big": 30, "tiny": 3})
    with pytest.raises(FolderRefused, match=r"Too few images to split.*'tiny': 3"):
        read_folder(tmp_path / "f")


def test_refuses_validation_classes_that_train_lacks(tmp_path: Path) -> None:
    make_images(tmp_path / "f" / "train", {"a": 6, "b": 6})
    make_images(tmp_path / "f" / "val", {"a": 2, "b": 2, "c": 2})
    with pytest.raises(FolderRefused, match="classes that .* lacks: 'c'"):
        read_folder(tmp_path / "f")


def test_refusal_comes_before_any_model_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built before the folder was checked")

    monkeypatch.setattr(own_pipeline, "build_backbone", no_model)
    make_images(tmp_path / "f", {"big": 30, "tiny": 2})
    with pytest.raises(FolderRefused):
        own_data.fit_folder(tmp_path / "f", tmp_path / "out", echo=None, progress=False)
    assert not (tmp_path / "out" / "report.json").exists()


def test_fingerprint_changes_with_any_file_even_at_the_same_size_and_time(tmp_path: Path) -> None:
    make_images(tmp_path / "f", {"a": 8, "b": 8})
    bmp = tmp_path / "f" / "a" / "x.bmp"  # BMP: the same size whatever the pixels
    Image.new("RGB", (16, 16), (10, 20, 30)).save(bmp)
    before = read_folder(tmp_path / "f").fingerprint()
    assert read_folder(tmp_path / "f").fingerprint() == before
    stat = bmp.stat()
    Image.new("RGB", (16, 16), (10, 20, 31)).save(bmp)
    os.utime(bmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert bmp.stat().st_size == stat.st_size
    assert read_folder(tmp_path / "f").fingerprint() != before
    make_images(tmp_path / "f2", {"a": 1})
    (tmp_path / "f" / "b" / "new.png").write_bytes((tmp_path / "f2" / "a" / "0.png").read_bytes())
    assert read_folder(tmp_path / "f").fingerprint() != before


@pytest.mark.parametrize("classes", [2, 3])
def test_a_folded_probe_gives_the_pipelines_probabilities(classes: int) -> None:
    import torch

    from tlcourse.experiments.own_data.candidates import fold_probe
    from tlcourse.features import fit_logistic_regression

    rng = np.random.default_rng(0)
    X = torch.tensor(rng.normal(size=(60, 7)) * rng.uniform(0.1, 10, size=7) + 3, dtype=torch.float32)
    y = torch.arange(60) % classes
    X[:, 0] += y * 2.0
    pipe = fit_logistic_regression(X, y, X, y, seed=0)["pipeline"]
    head = fold_probe(pipe)
    folded = (X.double() @ head["weight"].double().T + head["bias"].double()).softmax(1)
    assert head["weight"].shape == (classes, 7)
    assert np.allclose(folded.numpy(), pipe.predict_proba(X.numpy()), atol=1e-5)


def test_the_log_clock_can_start_before_the_call() -> None:
    """The command line passes its process's start: the budget then counts the imports too."""
    import time

    from tlcourse.experiments.own_data.pipeline import _Log

    lines: list[str] = []
    log = _Log(lines.append, started=time.time() - 50)
    log("first decision")
    assert 50 <= log.elapsed() < 60 and lines[0].startswith("[  50.")
    assert _Log(None).elapsed() < 5 and _Log(None, started=time.time() + 100).elapsed() < 5  # never negative


def test_the_choice_among_candidates_validation_cannot_separate_is_the_simplest_whatever_the_timings():
    """Breiman's one-standard-error rule on trained weights: a busy machine once let two probes' timing
    noise pick the larger one. Equal validation accuracy, so the 20-weight probe wins at any seconds."""
    import torch

    from tlcourse.experiments.own_data.candidates import Candidate
    from tlcourse.experiments.own_data.report import _choose

    y_val = [0, 1] * 10
    right = torch.nn.functional.one_hot(torch.tensor(y_val), 2).float()
    wrong_once = right.clone()
    wrong_once[0] = wrong_once[0].flip(0)

    def candidate(name: str, dim: int, seconds: float, proba: torch.Tensor, tta: bool = False) -> Candidate:
        head = {"weight": torch.zeros(2, dim), "bias": torch.zeros(2)}
        return Candidate(name, "probe_last", "net", "pooled", tta, tta, seconds, proba, proba, head)

    for fast_big, slow_small in ((1.0, 2.0), (2.0, 1.0)):
        big, small = candidate("big", 1280, fast_big, right), candidate("small", 10, slow_small, right)
        small_tta = candidate("small + TTA", 10, 0.5, right, tta=True)
        assert _choose([big, small_tta, small], y_val) is small
    assert small.trained_weights() == 22 and big.as_dict(y_val)["trained_weights"] == 2562
    # outside one standard error of the best (here 0: the best is 20 of 20), simplicity does not count
    assert _choose([candidate("small, one wrong", 10, 0.1, wrong_once), big], y_val) is big
