"""The dataset registry, lookup order, loaders, subsets/splits and duplicate finding.

Runs against tiny generated datasets registered in place of the real ones, so no test needs
the network or the real data; the last tests use the real mirror when ``TLCOURSE_MIRROR`` has it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import ConcatDataset, Subset
from torchvision.datasets import CIFAR10, ImageFolder

from tlcourse import data

TINY_AVP_COUNTS = {"train": {"alien": 3, "predator": 3}, "validation": {"alien": 2, "predator": 3}}


@pytest.fixture
def avp_in_mirror(dataset_dirs, tiny_data, register_spec, refused_url) -> Path:
    """A tiny alien-vs-predator.zip in the mirror, registered with its sha256 and counts;
    its canonical URL is refused, so nothing downloads by accident."""
    archive = tiny_data.avp_zip(dataset_dirs.mirror / "alien-vs-predator.zip")
    register_spec(
        "alien-vs-predator", sha256=data.sha256sum(archive), class_counts=TINY_AVP_COUNTS,
        url=refused_url,
    )
    return archive


# ----------------------------------------------------------------------------- registry


def test_registry_has_the_five_course_datasets_with_sources() -> None:
    assert set(data.DATASETS) == {
        "cifar10", "alien-vs-predator", "brain-mri", "breastmnist", "pneumoniamnist",
    }
    for spec in data.DATASETS.values():
        assert spec.url.startswith("https://") and len(spec.sha256) == 64
        assert spec.kind in ("imagefolder", "npz")
    assert "pneumoniamnist.npz" in data.DATASETS["pneumoniamnist"].accepted_filenames


def test_unknown_dataset_name_lists_the_known_ones(dataset_dirs) -> None:
    with pytest.raises(ValueError, match="brain-mri.*breastmnist"):
        data.locate("mnist")


# ----------------------------------------------------------------------------- locate order


def test_mirror_zip_is_verified_and_extracted_into_the_data_dir(dataset_dirs, avp_in_mirror) -> None:
    found = data.locate("alien-vs-predator", progress=False)
    assert found == dataset_dirs.data / "alien-vs-predator"
    assert data.count_images(found / "train") == {"alien": 3, "predator": 3}
    assert avp_in_mirror.exists()  # the mirror is only read


def test_data_dir_wins_over_the_mirror(dataset_dirs, avp_in_mirror) -> None:
    ours = dataset_dirs.data / "alien-vs-predator"
    (ours / "train").mkdir(parents=True)
    assert data.locate("alien-vs-predator") == ours
    assert data.count_images(ours / "train") == {}  # nothing was extracted over it


def test_archive_in_the_data_dir_is_extracted_in_place(dataset_dirs, avp_in_mirror, monkeypatch) -> None:
    os.replace(avp_in_mirror, dataset_dirs.data / avp_in_mirror.name)
    monkeypatch.delenv("TLCOURSE_MIRROR")
    found = data.locate("alien-vs-predator")
    assert found == dataset_dirs.data / "alien-vs-predator"
    assert data.count_images(found / "validation") == {"alien": 2, "predator": 3}


def test_corrupt_mirror_file_is_reported_not_used(dataset_dirs, avp_in_mirror) -> None:
    with open(avp_in_mirror, "ab") as file:
        file.write(b"garbage")
    with pytest.warns(UserWarning, match="corrupt"), pytest.raises(data.DatasetNotFoundError) as info:
        data.locate("alien-vs-predator", progress=False)
    assert "alien-vs-predator.zip is corrupt" in str(info.value)
    assert "expected sha256" in str(info.value)
    assert not (dataset_dirs.data / "alien-vs-predator").exists()


def test_nothing_anywhere_gives_the_three_ways_out_within_seconds(dataset_dirs, register_spec, refused_url) -> None:
    register_spec("brain-mri", url=refused_url)
    start = time.monotonic()
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.locate("brain-mri", progress=False)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert str(dataset_dirs.data) in message
    assert "brain-mri.zip" in message and data.DATASETS["brain-mri"].sha256 in message
    assert "TLCOURSE_MIRROR" in message and "python -m tlcourse stage" in message
    assert refused_url in message
    assert "refused" in message  # the underlying reason, in one line
    assert "Traceback" not in message


def test_download_false_says_so_in_the_message(dataset_dirs, monkeypatch) -> None:
    monkeypatch.delenv("TLCOURSE_MIRROR")
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.locate("breastmnist", download=False)
    assert "TLCOURSE_MIRROR is not set" in str(info.value)
    assert "downloading is turned off (download=False)" in str(info.value)


def test_download_from_a_github_archive_is_rearranged_and_counted(
    dataset_dirs, tiny_data, register_spec, local_http_server
) -> None:
    # GitHub's repo archive: <repo>-master/data/{train,validation}/<class>/...
    repo_zip = tiny_data.avp_zip(dataset_dirs.data.parent / "repo.zip", prefix="AvP-master/data/")
    url = local_http_server.serve("/master.zip", repo_zip.read_bytes())
    register_spec("alien-vs-predator", url=url, class_counts=TINY_AVP_COUNTS)

    found = data.locate("alien-vs-predator", progress=False)
    assert found == dataset_dirs.data / "alien-vs-predator"
    assert data.count_images(found / "validation") == {"alien": 2, "predator": 3}
    assert sorted(os.listdir(dataset_dirs.data)) == ["alien-vs-predator"]  # archive + temp gone


def test_github_archive_with_other_counts_is_refused(
    dataset_dirs, tiny_data, register_spec, local_http_server
) -> None:
    repo_zip = tiny_data.avp_zip(dataset_dirs.data.parent / "repo.zip", prefix="AvP-master/data/")
    url = local_http_server.serve("/master.zip", repo_zip.read_bytes())
    register_spec("alien-vs-predator", url=url)  # the real counts: 347/347, 100/100

    with pytest.raises(data.DatasetNotFoundError, match="expected .*347"):
        data.locate("alien-vs-predator", progress=False)
    assert not (dataset_dirs.data / "alien-vs-predator").exists()


def test_npz_download_is_checked_by_md5(dataset_dirs, tiny_data, register_spec, local_http_server) -> None:
    npz = tiny_data.npz(dataset_dirs.data.parent / "b.npz")
    body = npz.read_bytes()
    url = local_http_server.serve("/breastmnist.npz", body)
    register_spec("breastmnist", url=url, url_md5=hashlib.md5(body).hexdigest())
    assert data.locate("breastmnist", progress=False) == dataset_dirs.data / "breastmnist.npz"
    # Found locally the second time, with no server involved.
    local_http_server.routes.clear()
    assert data.locate("breastmnist", progress=False) == dataset_dirs.data / "breastmnist.npz"


def test_mirror_npz_is_used_in_place(dataset_dirs, tiny_data, register_spec) -> None:
    npz = tiny_data.npz(dataset_dirs.mirror / "breastmnist.npz")
    register_spec("breastmnist", sha256=data.sha256sum(npz))
    assert data.locate("breastmnist") == npz


def test_canonical_pneumoniamnist_file_is_accepted_by_its_md5(dataset_dirs, tiny_data, register_spec) -> None:
    canonical = tiny_data.npz(dataset_dirs.data / "pneumoniamnist.npz", labels_2d=True)
    register_spec("pneumoniamnist", url_md5=hashlib.md5(canonical.read_bytes()).hexdigest())
    assert data.locate("pneumoniamnist") == canonical


def test_status_reports_where_each_dataset_is(dataset_dirs, avp_in_mirror, tiny_data) -> None:
    tiny_data.npz(dataset_dirs.data / "breastmnist.npz")
    rows = {row["name"]: row for row in data.status()}
    assert rows["breastmnist"]["found"] == "data"
    assert rows["alien-vs-predator"]["found"] == "mirror"
    assert rows["alien-vs-predator"]["path"] == avp_in_mirror
    assert rows["cifar10"]["found"] is None
    assert rows["cifar10"]["url"].startswith("https://www.cs.toronto.edu/")


# ----------------------------------------------------------------------------- stage


def test_stage_copies_verified_files_and_skips_good_ones(dataset_dirs, avp_in_mirror, tmp_path) -> None:
    classroom = tmp_path / "classroom"
    staged = data.stage(["alien-vs-predator"], classroom, progress=False)
    assert staged == [classroom / "alien-vs-predator.zip"]
    assert staged[0].read_bytes() == avp_in_mirror.read_bytes()
    assert sorted(os.listdir(classroom)) == ["alien-vs-predator.zip"]

    mtime = staged[0].stat().st_mtime_ns
    time.sleep(0.01)
    assert data.stage(["alien-vs-predator"], classroom, progress=False) == staged
    assert staged[0].stat().st_mtime_ns == mtime  # already there with the right checksum


def test_stage_replaces_a_corrupt_copy(dataset_dirs, avp_in_mirror) -> None:
    bad = dataset_dirs.data / "alien-vs-predator.zip"
    bad.write_bytes(b"half a zip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.stage(["alien-vs-predator"], dataset_dirs.data, progress=False)
    assert data.sha256sum(bad) == data.sha256sum(avp_in_mirror)


# ----------------------------------------------------------------------------- loaders


def test_course_dataset_loads_every_mode_as_rgb_and_skips_non_images(dataset_dirs, tiny_data) -> None:
    root = dataset_dirs.data / "brain-mri"
    (root / "yes").mkdir(parents=True)
    (root / "no").mkdir()
    (root / "yes" / "Y 1.JPG").write_bytes(tiny_data.image_bytes("L"))
    (root / "yes" / "Y 2.jpeg").write_bytes(tiny_data.image_bytes("RGB"))
    (root / "no" / "no 1.png").write_bytes(tiny_data.image_bytes("RGBA", "PNG"))
    (root / "no" / "no 2.jpg").write_bytes(tiny_data.image_bytes("P", "PNG"))  # PNG named .jpg
    (root / "no" / "3").write_bytes(b"")  # an empty file without extension, as in the mirror

    with pytest.warns(data.SkippedFilesWarning, match="skipped 1 of 5 entries"):
        dataset = data.course_dataset("brain-mri")
    assert dataset.classes == ["no", "yes"]
    assert len(dataset) == 4
    for image, _ in dataset:
        assert image.mode == "RGB" and image.size == (8, 8)
    with pytest.raises(ValueError, match="no split"):
        data.course_dataset("brain-mri", split="train")


def test_course_dataset_needs_a_valid_split_for_avp(dataset_dirs, avp_in_mirror) -> None:
    train = data.course_dataset("alien-vs-predator", split="train")
    assert isinstance(train, ImageFolder) and train.classes == ["alien", "predator"]
    assert len(train) == 6
    with pytest.raises(ValueError, match="train.*validation"):
        data.course_dataset("alien-vs-predator", split="val")


@pytest.mark.parametrize("labels_2d", [False, True], ids=["labels(N,)", "labels(N,1)"])
def test_npz_dataset_gives_rgb_images_and_int_labels(tmp_path, tiny_data, labels_2d: bool) -> None:
    path = tiny_data.npz(tmp_path / "m.npz", labels_2d=labels_2d)
    dataset = data.NpzImageDataset(path, "val", classes=["normal", "pneumonia"])
    assert len(dataset) == 6
    assert dataset.targets == [0, 1, 0, 1, 0, 1]
    image, label = dataset[1]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (28, 28)
    assert type(label) is int and label == 1
    assert dataset.classes == ["normal", "pneumonia"]


def test_npz_dataset_refuses_multi_label_arrays(tmp_path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        data.NpzImageDataset(path, "train")


def test_medmnist_uses_the_registry_class_names(dataset_dirs, tiny_data, register_spec) -> None:
    npz = tiny_data.npz(dataset_dirs.data / "breastmnist.npz")
    register_spec("breastmnist", sha256=data.sha256sum(npz))
    dataset = data.medmnist("breastmnist", "test", transform=lambda im: np.asarray(im))
    assert dataset.classes == ["malignant", "normal/benign"]
    assert dataset[0][0].shape == (28, 28, 3)
    with pytest.raises(ValueError, match="split"):
        data.medmnist("breastmnist", "validation")


def test_cifar10_reads_the_jpeg_folders_in_cifar_class_order(dataset_dirs, tiny_data) -> None:
    for cls in reversed(data.CIFAR10_CLASSES):
        folder = dataset_dirs.data / "cifar10-jpg" / "test" / cls
        folder.mkdir(parents=True)
        (folder / "0001.jpg").write_bytes(tiny_data.image_bytes())
    dataset = data.cifar10("test")
    assert dataset.classes == list(data.CIFAR10_CLASSES)
    assert data.targets_of(dataset) == list(range(10))


def test_cifar10_falls_back_to_torchvision_batches(dataset_dirs, monkeypatch) -> None:
    # torchvision's own layout (what the canonical tarball extracts to), with tiny batches.
    batches = dataset_dirs.data / "cifar-10-batches-py"
    batches.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        arrays = {"data": np.zeros((2, 3072), np.uint8), "labels": [3, 5]}
        (batches / name).write_bytes(pickle.dumps(arrays))
    meta = pickle.dumps({"label_names": list(data.CIFAR10_CLASSES)})
    (batches / "batches.meta").write_bytes(meta)
    # Tiny fakes do not have the real files' md5s, which torchvision checks on load.
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setitem(CIFAR10.meta, "md5", hashlib.md5(meta).hexdigest())

    dataset = data.cifar10("train")
    assert isinstance(dataset, CIFAR10)
    assert len(dataset) == 10 and data.targets_of(dataset)[:2] == [3, 5]


# ----------------------------------------------------------------------------- subsets and splits


TARGETS = [0] * 50 + [1] * 30 + [2] * 7


def test_stratified_subset_takes_n_per_class_sorted_and_seeded() -> None:
    subset = data.stratified_subset(TARGETS, 5, seed=0)
    assert Counter(TARGETS[i] for i in subset) == {0: 5, 1: 5, 2: 5}
    assert subset == sorted(set(subset))
    assert subset == data.stratified_subset(TARGETS, 5, seed=0)
    assert subset != data.stratified_subset(TARGETS, 5, seed=1)


def test_stratified_subset_names_the_class_that_is_too_small() -> None:
    with pytest.raises(ValueError, match="class 2 has only 7"):
        data.stratified_subset(TARGETS, 8, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_split_is_proportional_disjoint_and_complete(seed: int) -> None:
    train, val = data.stratified_split(TARGETS, 0.2, seed)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(len(TARGETS)))
    assert Counter(TARGETS[i] for i in val) == {0: 10, 1: 6, 2: 1}
    assert {TARGETS[i] for i in train} == {0, 1, 2}
    assert (train, val) == data.stratified_split(TARGETS, 0.2, seed)


def test_stratified_split_keeps_rare_classes_in_both_parts() -> None:
    train, val = data.stratified_split([0] * 20 + [1] * 2, 0.1, seed=0)
    assert {0, 1} <= {([0] * 20 + [1] * 2)[i] for i in val}
    assert 21 in train or 20 in train
    with pytest.raises(ValueError, match="class 1 has 1 item"):
        data.stratified_split([0, 0, 1], 0.5, seed=0)


def test_targets_of_reads_subsets_and_concatenations(tmp_path, tiny_data) -> None:
    dataset = data.NpzImageDataset(tiny_data.npz(tmp_path / "m.npz"), "train")
    assert data.targets_of(dataset) == [0, 1, 0, 1, 0, 1]
    assert data.targets_of(Subset(dataset, [1, 3, 4])) == [1, 1, 0]
    assert data.targets_of(ConcatDataset([Subset(dataset, [0]), dataset])) == [0, 0, 1, 0, 1, 0, 1]


def test_find_duplicates_groups_identical_files(tmp_path) -> None:
    for name, content in {"a/1": b"x", "b/2": b"x", "c/3": b"y", "d/4": b"x", "e/5": b"z", "f/6": b"y"}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    (tmp_path / "g").mkdir()
    (tmp_path / "g/7").write_bytes(b"")
    (tmp_path / "g/8").write_bytes(b"")
    groups = data.find_duplicates(sorted(tmp_path.rglob("*"), reverse=True))
    assert groups == [
        [tmp_path / "a/1", tmp_path / "b/2", tmp_path / "d/4"],
        [tmp_path / "c/3", tmp_path / "f/6"],
    ]
    empty_group = [tmp_path / "g/7", tmp_path / "g/8"]
    assert empty_group in data.find_duplicates(tmp_path.rglob("*"), skip_empty=False)


# ----------------------------------------------------------------------------- the real mirror


def real_mirror_file(name: str) -> Path:
    mirror = os.environ.get("TLCOURSE_MIRROR")
    if not mirror or not (Path(mirror) / name).is_file():
        pytest.skip(f"set TLCOURSE_MIRROR to a folder with {name} (CI: /work/shared/datasets)")
    return Path(mirror) / name


def test_real_alien_vs_predator_has_694_200_images_and_two_leaks(tmp_path, monkeypatch) -> None:
    real_mirror_file("alien-vs-predator.zip")
    monkeypatch.setenv("TLCOURSE_DATA_DIR", str(tmp_path / "data"))
    root = data.locate("alien-vs-predator", download=False)
    train = data.course_dataset("alien-vs-predator", "train")
    validation = data.course_dataset("alien-vs-predator", "validation")
    assert (len(train), len(validation)) == (694, 200)

    groups = data.find_duplicates(path for path, _ in train.samples + validation.samples)
    cross_split = [
        [p.relative_to(root).as_posix() for p in group]
        for group in groups
        if len({p.relative_to(root).parts[0] for p in group}) > 1
    ]
    assert cross_split == [
        ["train/predator/199.jpg", "validation/predator/1.jpg"],
        ["train/predator/247.jpg", "validation/predator/58.jpg"],
    ]


def test_real_brain_mri_has_253_images_all_loadable_as_rgb(tmp_path, monkeypatch) -> None:
    real_mirror_file("brain-mri.zip")
    monkeypatch.setenv("TLCOURSE_DATA_DIR", str(tmp_path / "data"))
    with pytest.warns(data.SkippedFilesWarning, match="skipped 49 of 302 entries"):
        dataset = data.course_dataset("brain-mri")
    assert Counter(data.targets_of(dataset)) == {0: 98, 1: 155}
    # The odd ones: palette, RGBA and grey files (checked on a few to keep the test fast).
    odd = [i for i, (p, _) in enumerate(dataset.samples) if p.lower().endswith((".png", ".jpeg"))]
    assert odd and all(dataset[i][0].mode == "RGB" for i in odd)
    # README: 25 redundant exact copies. The mirror also holds 49 empty files without extension
    # (ImageFolder skips them; find_duplicates too), so counting over all files gives the same.
    all_files = [p for p in data.locate("brain-mri").rglob("*") if p.is_file()]
    assert sum(1 for p in all_files if p.stat().st_size == 0) == 49
    for files in (all_files, [Path(p) for p, _ in dataset.samples]):
        assert sum(len(g) - 1 for g in data.find_duplicates(files)) == 25


@pytest.mark.parametrize(
    "name, filename, train_count",
    [("breastmnist", "breastmnist.npz", 546), ("pneumoniamnist", "pneumoniamnist-balanced.npz", 2428)],
)
def test_real_medmnist_files_load(
    tmp_path, monkeypatch, name: str, filename: str, train_count: int
) -> None:
    real_mirror_file(filename)
    monkeypatch.setenv("TLCOURSE_DATA_DIR", str(tmp_path / "data"))
    dataset = data.medmnist(name, "train")
    assert len(dataset) == train_count and set(dataset.targets) == {0, 1}


def test_loader_throughput_times_every_setting_over_the_whole_dataset() -> None:
    import torch
    from torch.utils.data import TensorDataset

    dataset = TensorDataset(torch.zeros(10, 3, 4, 4), torch.arange(10))
    rows = data.loader_throughput(dataset, batch_sizes=(3, 10), workers=(0,), pin_memory=(False,))
    assert [(r["batch_size"], r["num_workers"], r["pin_memory"]) for r in rows] == [(3, 0, False), (10, 0, False)]
    assert all(r["images"] == 10 and r["images_per_s"] > 0 for r in rows)
