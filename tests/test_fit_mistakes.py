"""``python -m tlcourse fit`` and the mistakes a learner makes with it (issue 25).

An output folder inside the image folder, nonsense arguments, a test set too small to mean
anything, an output path under a file, and more: each ends in one readable line (or a warning in
the report), never a traceback or a misleading result. Refusals come before anything is read:
``read_folder`` is replaced by a function that fails the test if it is reached. The runs that do
train use EfficientNet-Lite0 at 64 px on a few dozen generated images (seconds each).
"""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest

from tests.test_own_data import make_images
from tlcourse.__main__ import main
from tlcourse._io import DiskWriteError
from tlcourse.evaluation import accuracy_ci
from tlcourse.experiments import own_data
from tlcourse.experiments.own_data import pipeline, read_folder
from tlcourse.experiments.own_data.pipeline import BadArgument
from tlcourse.experiments.own_data.report import MAX_CI_WIDTH, MIN_TEST, needed_test_images, small_test_set_warning
from tlcourse.experiments.own_data.scan import FIT_MARKER, FolderRefused

FAST = ["--crop", "64", "--larger", "--full-ft", "never", "--budget", "600"]
FAST_API = dict(crop=64, larger=(), full_ft="never", budget=600, progress=False, echo=None)


def _no_reading(*args: object, **kwargs: object) -> None:
    raise AssertionError("the folder was read before the arguments were checked")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["fit", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------ 1 and 3: out inside FOLDER, a tiny test set


@pytest.fixture(scope="module")
def inside_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The learner's ``fit(FOLDER, FOLDER/results)``, once, in a path with spaces and non-ASCII (no export)."""
    folder = tmp_path_factory.mktemp("own") / "mes photos" / "chats et chiens ü 猫"
    make_images(folder, {"blue": 12, "red": 12})
    own_data.fit_folder(folder, folder / "résultats du fit", export=False, **FAST_API)
    return folder, folder / "résultats du fit"


def test_an_out_inside_the_folder_is_not_read_as_a_class_on_the_next_run(inside_run) -> None:
    folder, out = inside_run
    assert (out / FIT_MARKER).is_file() and (out / "report.json").is_file()
    data = read_folder(folder)
    assert data.classes == ["blue", "red"] and data.fit_outputs == [str(out)]
    assert not any("résultats" in str(b.path) for b in data.bad)  # fit's own files are not listed as unusable
    again = own_data.fit_folder(folder, out, export=False, **FAST_API)  # the same call again: works, resumes
    assert any("left out fit's own output folder" in line for line in again.decisions)
    assert all(c["resumed"] for c in again.candidates) and again.split["train"].keys() == {"blue", "red"}


def test_an_output_folder_from_before_the_marker_is_recognised(tmp_path: Path, monkeypatch) -> None:
    """A results folder an earlier version wrote into FOLDER (no marker, but its candidates/) is left out too."""
    make_images(tmp_path / "f", {"a": 8, "b": 8})
    (tmp_path / "f" / "results" / "candidates").mkdir(parents=True)
    (tmp_path / "f" / "results" / "report.json").write_text("{}")

    class Scanned(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> None:
        raise Scanned

    monkeypatch.setattr(pipeline, "build_backbone", stop)  # the folder was read and accepted: enough
    with pytest.raises(Scanned):
        own_data.fit_folder(tmp_path / "f", tmp_path / "f" / "results", **FAST_API)
    assert (tmp_path / "f" / "results" / FIT_MARKER).is_file() and read_folder(tmp_path / "f").classes == ["a", "b"]


def test_an_output_folder_deeper_inside_a_class_is_left_out_too(tmp_path: Path) -> None:
    make_images(tmp_path / "f" / "train", {"a": 6, "b": 6})
    make_images(tmp_path / "f" / "val", {"a": 2, "b": 2}, seed=1)
    out = tmp_path / "f" / "train" / "a" / "runs" / "first"
    (out / "cache").mkdir(parents=True)
    (out / FIT_MARKER).write_text("written by fit")
    (out / "cache" / "features.pt").write_bytes(b"not an image")
    (out / "report.json").write_text("{}")
    data = read_folder(tmp_path / "f")
    assert data.bad == [] and data.fit_outputs == [str(out)] and len(data.samples) == 16


def test_a_tiny_test_set_is_warned_about_in_the_log_the_json_and_the_html(inside_run) -> None:
    _, out = inside_run
    saved = json.loads((out / "report.json").read_text())
    near = {pair["test"] for pair in saved["duplicates"]["near_test_train"]}
    assert saved["n_test"] == 4 - len(near) >= 1  # the flat folder's 4 test images, less its near-copies
    assert len(saved["warnings"]) == 1
    warning = saved["warnings"][0]
    need = needed_test_images(saved["test_accuracy"])
    assert "too small" in warning and f"About {need} test images" in warning
    assert f"about {math.ceil(need / 0.2)} different images in all" in warning  # a flat folder: a fifth is test
    assert any(line.endswith(f"warning: {warning}") for line in saved["decisions"])
    page = (out / "report.html").read_text()
    assert "<p class='warning'><b>Warning:</b> the test set is too small" in page


def test_the_images_needed_come_from_the_wilson_interval() -> None:
    for accuracy in (0.0, 0.5, 0.73, 0.9, 1.0):
        need = needed_test_images(accuracy)
        assert need >= MIN_TEST
        ci = accuracy_ci(round(accuracy * need), need)
        assert ci.high - ci.low <= MAX_CI_WIDTH
        if need > MIN_TEST:  # the fewest: one image fewer is still too wide
            ci = accuracy_ci(round(accuracy * (need - 1)), need - 1)
            assert ci.high - ci.low > MAX_CI_WIDTH
    assert needed_test_images(0.5) == 39 and needed_test_images(1.0) == 30


def test_the_warning_rule(tmp_path: Path) -> None:
    make_images(tmp_path / "f" / "train", {"a": 4, "b": 4})
    make_images(tmp_path / "f" / "val", {"a": 2, "b": 2}, seed=1)
    data = read_folder(tmp_path / "f")
    one = small_test_set_warning(accuracy_ci(1, 1), data, near_copies=7)  # the issue's report: 100%, n=1
    assert one is not None and "1 test image(s) give 100.0%" in one and "About 30 test images" in one
    assert "7 test image(s) were left out as near-copies" in one and "folder used as the test set" in one
    assert small_test_set_warning(accuracy_ci(29, 29), data, 0) is not None  # narrow, but fewer than 30
    assert small_test_set_warning(accuracy_ci(20, 40), data, 0) is None  # 30 points wide at 40 images: enough
    assert small_test_set_warning(accuracy_ci(18, 38), data, 0) is not None  # 31 points wide


# ------------------------------------------------------------------ 2: nonsense arguments, refused before reading

REFUSED = [
    (["--budget", "-5"], "--budget must be a number of seconds above 0"),
    (["--budget", "0"], "--budget must be a number of seconds above 0"),
    (["--budget", "nan"], "--budget must be a number of seconds above 0"),
    (["--budget", "inf"], "--budget must be a number of seconds above 0"),
    (["--budget", "two minutes"], "got 'two minutes'"),
    (["--crop", "16"], "--crop must be a whole number of pixels from 32 to 1024"),
    (["--crop", "31"], "efficientnet_lite0 shrinks images 32-fold"),
    (["--crop", "2000"], "--crop must be a whole number of pixels from 32 to 1024"),
    (["--crop", "64.5"], "got 64.5"),
    (["--seed", "1.5"], "--seed must be a whole number from 0 to 4294967295, e.g. 0 or 42; got 1.5."),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295"),
    (["--seed", "lucky"], "got 'lucky'"),
    (["--seed", str(2**32)], "--seed must be a whole number from 0 to 4294967295"),
    (["--backbone", "resnet"], "--backbone: 'resnet' is not a backbone this course knows; choose from "
                               "efficientnet_lite0, efficientnet_lite1"),
    (["--larger", "efficientnet_lite9"], "--larger: 'efficientnet_lite9' is not a backbone"),
]


@pytest.mark.parametrize(("extra", "message"), REFUSED, ids=[" ".join(e) for e, _ in REFUSED])
def test_nonsense_arguments_are_refused_before_anything_is_read(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "read_folder", _no_reading)
    make_images(tmp_path / "f", {"a": 6, "b": 6})
    code, _, err = _run([str(tmp_path / "f"), "--out", str(tmp_path / "out"), *extra], capsys)
    assert code == 1 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and "usage:" not in err
    assert not (tmp_path / "out").exists()


def test_the_python_api_refuses_the_same_arguments(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "read_folder", _no_reading)
    make_images(tmp_path / "f", {"a": 6, "b": 6})
    for bad, message in ((dict(budget=-5), "budget must be"), (dict(crop=8), "crop must be"),
                         (dict(seed=0.5), "seed must be"), (dict(full_ft="sometimes"), "full_ft must be")):
        with pytest.raises(BadArgument, match=message):
            own_data.fit_folder(tmp_path / "f", tmp_path / "out", **{**FAST_API, **bad})
    assert not (tmp_path / "out").exists()


def test_a_missing_folder_or_a_file_is_refused_before_anything_is_read(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "read_folder", _no_reading)
    code, _, err = _run([str(tmp_path / "photoes"), "--out", str(tmp_path / "out"), *FAST], capsys)
    assert code == 1 and f"There is no folder {tmp_path / 'photoes'}: check the spelling" in err
    (tmp_path / "photos.zip").write_bytes(b"PK")
    code, _, err = _run([str(tmp_path / "photos.zip"), "--out", str(tmp_path / "out"), *FAST], capsys)
    assert code == 1 and "photos.zip is a file: FOLDER must be the folder that holds one subfolder" in err
    assert not (tmp_path / "out").exists()


def test_out_equal_to_the_folder_or_holding_other_files_is_refused(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "read_folder", _no_reading)
    make_images(tmp_path / "f", {"a": 6, "b": 6})
    code, _, err = _run([str(tmp_path / "f"), "--out", str(tmp_path / "f"), *FAST], capsys)
    assert code == 1 and "is FOLDER itself" in err and f"--out {tmp_path / 'f-fit'}" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model.onnx").write_text("the learner's own model")
    code, _, err = _run([str(tmp_path / "f"), "--out", str(tmp_path / "mine"), *FAST], capsys)
    assert code == 1 and "already holds files that fit did not write (model.onnx)" in err
    code, _, err = _run([str(tmp_path / "f"), "--out", str(tmp_path / "f" / "a"), *FAST], capsys)  # a class folder
    assert code == 1 and "It is inside FOLDER, where it would be read as a class" in err
    assert (tmp_path / "mine" / "model.onnx").read_text() == "the learner's own model"


# ------------------------------------------------------------------ 4: an output path under a file


def test_an_out_under_a_file_gives_the_clear_disk_error(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "read_folder", _no_reading)
    make_images(tmp_path / "f", {"a": 6, "b": 6})
    (tmp_path / "somefile.txt").write_text("notes")
    out = tmp_path / "somefile.txt" / "results"
    code, _, err = _run([str(tmp_path / "f"), "--out", str(out), *FAST], capsys)
    assert code == 1 and err.startswith(f"error: Could not create the folder {out}: part of the path is a file")
    assert f"The file in the way is {tmp_path / 'somefile.txt'}" in err and "--out DIR" in err
    assert "[Errno" not in err and "candidates" not in err  # no internal path
    with pytest.raises(DiskWriteError) as info:
        own_data.fit_folder(tmp_path / "f", tmp_path / "somefile.txt", **FAST_API)  # --out is the file itself
    assert info.value.errno == errno.ENOTDIR and "The file in the way is" in str(info.value)
    assert (tmp_path / "somefile.txt").read_text() == "notes"


# ------------------------------------------------------------------ more mistakes


def test_images_without_class_folders_are_refused_with_the_layout(tmp_path, capsys) -> None:
    made = make_images(tmp_path / "tmp", {"x": 12})
    (tmp_path / "f").mkdir()
    for path in made:
        path.rename(tmp_path / "f" / path.name)
    code, _, err = _run([str(tmp_path / "f"), "--out", str(tmp_path / "out"), *FAST], capsys)
    assert code == 1 and "has no class folders (12 file(s) directly in it)" in err and "cat/" in err
    assert not (tmp_path / "out").exists()  # a refused folder leaves no output folder behind


def test_a_class_of_non_images_says_what_was_found(tmp_path, capsys) -> None:
    make_images(tmp_path / "f", {"a": 6, "b": 6})
    (tmp_path / "f" / "notes").mkdir()
    for name in ("todo.txt", "labels.csv"):
        (tmp_path / "f" / "notes" / name).write_text("not an image")
    code, _, err = _run([str(tmp_path / "f"), "--out", str(tmp_path / "out"), *FAST], capsys)
    assert code == 1 and "('notes': 0)" in err and "'notes' also holds 2 unusable file(s), e.g. labels.csv:" in err


def test_the_output_folder_given_as_folder_is_refused(inside_run, tmp_path, capsys) -> None:
    _, out = inside_run
    code, _, err = _run([str(out), "--out", str(tmp_path / "x"), *FAST], capsys)
    assert code == 1 and f"{out} is an output folder of fit" in err
    with pytest.raises(FolderRefused, match="is an output folder of fit"):
        read_folder(out / "cache")


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch) -> None:
    make_images(tmp_path / "f", {"a": 8, "b": 8})

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "top_stage_finetune", interrupted)
    code, _, err = _run([str(tmp_path / "f"), "--out", str(tmp_path / "out"), *FAST], capsys)
    assert code == 130 and "interrupted: the candidates finished so far are saved in" in err
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert list((tmp_path / "out" / "candidates").glob("*/probes.pt"))  # what was finished is kept


def test_a_test_set_of_near_copies_only_is_refused(tmp_path, monkeypatch) -> None:
    make_images(tmp_path / "f", {"a": 6, "b": 6})
    monkeypatch.setattr(pipeline, "NEAR_DUPLICATE", -1.0)  # every test image counts as a near copy
    monkeypatch.setattr(pipeline, "probe_candidates", _no_reading)
    with pytest.raises(FolderRefused, match=r"Nothing is left to test on: each of the 2 test image\(s\) is a near"):
        own_data.fit_folder(tmp_path / "f", tmp_path / "out", **FAST_API)
