"""Every kind of file the package writes and reads back, damaged: cut to 0 bytes, a few bytes or
half, or of a format this version does not read. Each gives one clear error that names the file
and says what to do (:class:`tlcourse._io.DamagedFileError`), or, for a pure cache, is silently
computed again (issue 15, point 2)."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tlcourse import data
from tlcourse._io import DamagedFileError, atomic_write_text, read_json, read_or_explain
from tlcourse.courseware import results
from tlcourse.data.datasets import NpzImageDataset
from tlcourse.features.cache import cached_features
from tlcourse.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint

CUTS = {"empty": lambda n: 0, "few-bytes": lambda n: 5, "half": lambda n: n // 2}


def cut(path: Path, how: str) -> None:
    """Truncate ``path`` to what ``CUTS[how]`` keeps (what a copy cut short leaves)."""
    raw = path.read_bytes()
    path.write_bytes(raw[: CUTS[how](len(raw))])


def assert_names_and_advises(err: BaseException, path: Path, advice: str) -> None:
    assert isinstance(err, DamagedFileError) and isinstance(err, ValueError)
    assert str(path) in str(err) and advice in str(err)
    assert "\n" not in str(err)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("how", CUTS)
def test_damaged_checkpoint_names_the_file_and_says_delete_it(tmp_path: Path, how: str) -> None:
    path = save_checkpoint({"format": CHECKPOINT_FORMAT, "model": nn.Linear(3, 2).state_dict(), "epoch": 1},
                           tmp_path / "last.pt")
    cut(path, how)
    with pytest.raises(DamagedFileError) as info:
        load_checkpoint(path, nn.Linear(3, 2))
    assert_names_and_advises(info.value, path, "Delete it")
    assert str(info.value).startswith(f"Could not read checkpoint {path}")


def test_checkpoint_of_another_format_names_both_formats(tmp_path: Path) -> None:
    path = save_checkpoint({"format": 99, "model": nn.Linear(3, 2).state_dict(), "epoch": 1}, tmp_path / "x.pt")
    with pytest.raises(DamagedFileError, match=rf"format 99.*reads format {CHECKPOINT_FORMAT}") as info:
        load_checkpoint(path)
    assert_names_and_advises(info.value, path, "Delete it")


# ----------------------------------------------------------------------------- metrics


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "build"))
    return tmp_path / "build"


@pytest.mark.parametrize("how", CUTS)
def test_damaged_metrics_file_is_an_error_from_record_and_load(build: Path, how: str) -> None:
    results.record("01_data_loading", {"val_acc": 0.9, "n": 3})
    path = results.metrics_path("01_data_loading")
    cut(path, how)
    before = path.read_bytes()
    for call in (lambda: results.load_metrics("01_data_loading"),
                 lambda: results.record("01_data_loading", {"n": 4})):
        with pytest.raises(DamagedFileError) as info:
            call()
        assert_names_and_advises(info.value, path, "Delete it and run the notebook again")
    assert path.read_bytes() == before  # record did not paper over it (and lose the old values)


def test_metrics_file_of_another_shape_is_an_error(build: Path) -> None:
    path = results.metrics_path("02_fine_tuning")
    atomic_write_text(path, json.dumps({"metrics": [1, 2]}))
    with pytest.raises(DamagedFileError, match="not an object with a 'metrics' object"):
        results.load_metrics("02_fine_tuning")


# ----------------------------------------------------------------------------- feature cache


class Flat(nn.Module):
    """A backbone stand-in: flattens and projects."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("how", CUTS)
def test_damaged_feature_cache_is_extracted_again_silently(tmp_path: Path, how: str) -> None:
    model = Flat()
    dataset = TensorDataset(torch.randn(6, 3, 2, 2), torch.arange(6) % 2)
    first = cached_features(model, dataset, root=tmp_path, dataset_id="six", progress=False)
    cut(first.path, how)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silently: not even a warning
        again = cached_features(model, dataset, root=tmp_path, dataset_id="six", progress=False)
    assert not again.hit  # extracted again, not an error
    torch.testing.assert_close(again.features, first.features)
    assert cached_features(model, dataset, root=tmp_path, dataset_id="six", progress=False).hit  # file rewritten


# ----------------------------------------------------------------------------- dataset files


@pytest.mark.parametrize("how", CUTS)
def test_damaged_npz_names_the_file_and_says_delete_it(tmp_path: Path, tiny_data, how: str) -> None:
    path = tiny_data.npz(tmp_path / "breastmnist.npz")
    assert len(NpzImageDataset(path, "train")) == 6
    cut(path, how)
    with pytest.raises(DamagedFileError) as info:
        NpzImageDataset(path, "train")
    assert_names_and_advises(info.value, path, "Delete it")


@pytest.mark.parametrize("how", CUTS)
def test_damaged_archive_names_the_file_and_what_to_do(tmp_path: Path, tiny_data, how: str) -> None:
    archive = tiny_data.avp_zip(tmp_path / "alien-vs-predator.zip")
    cut(archive, how)
    with pytest.raises(DamagedFileError) as info:
        data.safe_extract(archive, tmp_path / "out")
    assert_names_and_advises(info.value, archive, "stage the mirror again")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_archive_with_a_corrupt_member_is_damaged_and_leaves_nothing(tmp_path: Path, tiny_data) -> None:
    archive = tiny_data.avp_zip(tmp_path / "a.zip")
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.infolist()[2]
    start = info.header_offset + 30 + len(info.filename)  # the member's stored bytes
    raw[start:start + 20] = b"\0" * 20
    archive.write_bytes(bytes(raw))
    with pytest.raises(DamagedFileError, match="a.zip"):
        data.safe_extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_damaged_mirror_file_says_stage_the_mirror_again(dataset_dirs, tiny_data, register_spec, refused_url) -> None:
    archive = tiny_data.avp_zip(dataset_dirs.mirror / "alien-vs-predator.zip")
    register_spec("alien-vs-predator", sha256=data.sha256sum(archive), url=refused_url,
                  class_counts={"train": {"alien": 3, "predator": 3}, "validation": {"alien": 2, "predator": 3}})
    cut(archive, "half")
    with pytest.warns(UserWarning, match="stage the mirror again"), pytest.raises(data.DatasetNotFoundError) as info:
        data.locate("alien-vs-predator", timeout=2, progress=False)
    assert str(archive) in str(info.value) and "stage --to" in str(info.value)


def test_damaged_file_in_data_dir_says_delete_it(dataset_dirs, tiny_data, register_spec, refused_url) -> None:
    archive = tiny_data.avp_zip(dataset_dirs.data / "alien-vs-predator.zip")
    register_spec("alien-vs-predator", sha256=data.sha256sum(archive), url=refused_url)
    cut(archive, "few-bytes")
    with pytest.warns(UserWarning), pytest.raises(data.DatasetNotFoundError, match="Delete it") as info:
        data.locate("alien-vs-predator", timeout=2, progress=False)
    assert str(archive) in str(info.value)


# ----------------------------------------------------------------------------- the helper


def test_read_or_explain_keeps_missing_files_and_the_cause(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_or_explain(tmp_path / "absent.json", read_json, what="report", remedy="Run it again.")
    bad = tmp_path / "r.json"
    bad.write_text('{"rows": [1,')
    with pytest.raises(DamagedFileError, match=r"Could not read report .*r\.json.*Run it again\.") as info:
        read_or_explain(bad, read_json, what="report", remedy="Run it again.")
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


# ----------------------------------------------------------------------------- decision-matrix results


@pytest.mark.parametrize("how", CUTS)
def test_damaged_decision_matrix_results_name_the_file(tmp_path: Path, how: str) -> None:
    from tlcourse.experiments import decision_matrix

    rows = [{"quadrant": "small_similar", "strategy": "probe_last", "seed": 0, "accuracy": 0.9}]
    path, _ = decision_matrix.save_results(rows, tmp_path / "matrix.json", meta={"command": "test"})
    assert decision_matrix.load_results(path)["rows"] == rows
    cut(path, how)
    with pytest.raises(DamagedFileError) as info:
        decision_matrix.load_results(path)
    assert_names_and_advises(info.value, path, "Delete it")


# ----------------------------------------------------------------------------- bundles and exported ONNX files


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    from tlcourse import inference, models

    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = models.build_backbone("efficientnet_lite0", 2, pretrained=False).eval()
    pre = models.backbone_spec("efficientnet_lite0").preprocessing()
    bundle = inference.export_bundle(model, folder / "model.pt", class_names=["a", "b"], preprocessing=pre)
    onnx_file = inference.export_onnx(model, folder / "model.onnx", 64, class_names=["a", "b"], preprocessing=pre)
    return Path(bundle), Path(onnx_file)


@pytest.mark.parametrize("how", CUTS)
def test_damaged_bundle_names_the_file_and_says_export_again(exported, tmp_path: Path, how: str) -> None:
    from tlcourse import inference

    path = tmp_path / "model.pt"
    path.write_bytes(exported[0].read_bytes())
    assert inference.load_bundle(path).class_names == ["a", "b"]
    cut(path, how)
    with pytest.raises(DamagedFileError) as info:
        inference.load_bundle(path)
    assert_names_and_advises(info.value, path, "Export it again")


def test_bundle_of_another_format_names_both_formats(exported, tmp_path: Path) -> None:
    from tlcourse import inference

    raw = torch.load(exported[0], weights_only=True)
    path = save_checkpoint({**raw, "format": 99}, tmp_path / "future.pt")
    with pytest.raises(DamagedFileError, match=r"format 99.*reads format 1"):
        inference.load_bundle(path)


@pytest.mark.parametrize("how", CUTS)
def test_damaged_onnx_export_names_the_file(exported, tmp_path: Path, how: str) -> None:
    from tlcourse import inference

    path = tmp_path / "model.onnx"
    path.write_bytes(exported[1].read_bytes())
    assert inference.onnx_metadata(path)["class_names"] == ["a", "b"]
    cut(path, how)
    with pytest.raises(DamagedFileError) as info:
        inference.onnx_metadata(path)
    assert_names_and_advises(info.value, path, "Export it again")
