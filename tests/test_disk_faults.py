"""A full or read-only disk (issue 15, point 3): writing a checkpoint, cache, bundle or report where
the disk runs out or may not be written raises one clear ``OSError`` (:class:`tlcourse._io.DiskWriteError`)
that names the folder and the setting that moves it, keeps the previous file intact and leaves
no partial file behind.

The full disk is a file-size limit (``RLIMIT_FSIZE``, with SIGXFSZ ignored so the write fails
with EFBIG) in a child process. The read-only folder is ``chmod 0o555``; root ignores that, so
the writer runs in a child that, as root, first drops CAP_DAC_OVERRIDE (the right to ignore modes).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tlcourse._io import DiskWriteError, atomic_write_text
from tlcourse.courseware import results

ROOT = Path(__file__).resolve().parent.parent

# The child writes small files, then lowers its file-size limit and tries each writer again.
CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    import torch
    from tlcourse.courseware import results
    from tlcourse._io import atomic_save, atomic_write_text
    from tlcourse.train.checkpoint import save_checkpoint
    folder = sys.argv[1]
    writers = {
        "checkpoint": lambda: save_checkpoint({"w": torch.zeros(1 << 18)}, folder + "/last.pt"),
        "feature-cache": lambda: atomic_save({"features": torch.zeros(1 << 18)}, folder + "/f.pt"),
        "report": lambda: atomic_write_text(folder + "/report.html", "x" * (1 << 20)),
        "metrics": lambda: results.record("05_alien_vs_predator", {"curve": [0.5] * (1 << 17)}),
    }
    save_checkpoint({"w": torch.ones(3)}, folder + "/last.pt")
    atomic_save({"features": torch.ones(3)}, folder + "/f.pt")
    atomic_write_text(folder + "/report.html", "old report")
    results.record("05_alien_vs_predator", {"acc": 0.5})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    out = {}
    for name, write in writers.items():
        try:
            write()
            out[name] = None
        except OSError as err:
            out[name] = {"type": type(err).__name__, "errno": err.errno, "message": str(err),
                         "cause": type(err.__cause__).__name__}
    out["old checkpoint"] = torch.load(folder + "/last.pt", weights_only=True)["w"].tolist()
    out["old metrics"] = results.load_metrics("05_alien_vs_predator")
    print(json.dumps(out))
""")


def test_running_out_of_space_mid_write_is_a_clear_error_and_keeps_the_old_file(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    env = {**os.environ, "TLCOURSE_BUILD_DIR": str(build), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(build)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome.pop("old checkpoint") == [1.0, 1.0, 1.0]
    assert outcome.pop("old metrics") == {"acc": 0.5}
    for name, err in outcome.items():
        assert err is not None, f"{name}: the write past the limit did not fail"
        assert err["type"] == "DiskWriteError" and err["errno"] == errno.EFBIG, (name, err)
        assert str(build) in err["message"] and "TLCOURSE_BUILD_DIR" in err["message"], err["message"]
        assert err["cause"] != "NoneType"
    # the previous files are intact and nothing half-written is left
    assert sorted(p.name for p in build.iterdir()) == ["f.pt", "last.pt", "metrics", "report.html"]
    assert (build / "report.html").read_text() == "old report"
    assert sorted(p.name for p in (build / "metrics").iterdir()) == [".05_alien_vs_predator.json.lock",
                                                                     "05_alien_vs_predator.json"]


READ_ONLY_CHILD = textwrap.dedent("""
    import json
    from tlcourse.courseware import results
    try:
        results.record("01_data_loading", {"acc": 0.9})
        print(json.dumps(None))
    except OSError as err:
        print(json.dumps({"type": type(err).__name__, "errno": err.errno, "message": str(err)}))
""")

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1


def _without_dac_override() -> None:
    """In the child before exec: drop root's right to ignore file permissions (a 0o555 folder).

    Root's capabilities after exec are its bounding set; without CAP_DAC_OVERRIDE in it, the
    folder's mode applies to root too, as it does to a learner's ordinary account.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) is not permitted here")


def test_read_only_folder_is_a_clear_error_naming_the_folder_and_the_setting() -> None:
    # A folder every user can reach (pytest's tmp_path is private to root).
    top = Path(tempfile.mkdtemp(prefix="tlcourse-ro-"))
    try:
        top.chmod(0o755)
        metrics = top / "build" / "metrics"
        metrics.mkdir(parents=True)
        (metrics / "01_data_loading.json").write_text('{"metrics": {"acc": 0.5}}')
        metrics.chmod(0o555)
        env = {**os.environ, "TLCOURSE_BUILD_DIR": str(top / "build"), "OMP_NUM_THREADS": "1"}
        as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        try:
            done = subprocess.run([sys.executable, "-c", READ_ONLY_CHILD], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120,
                                  preexec_fn=_without_dac_override if as_root else None)
        except subprocess.SubprocessError as err:
            pytest.skip(f"running as root, and root may not drop CAP_DAC_OVERRIDE here ({err})")
        assert done.returncode == 0, done.stderr[-2000:]
        err = json.loads(done.stdout.strip().splitlines()[-1])
        assert err is not None, "the write into a read-only folder did not fail"
        assert err["type"] == "DiskWriteError" and err["errno"] in (errno.EACCES, errno.EROFS, errno.EPERM)
        assert str(metrics) in err["message"] and "TLCOURSE_BUILD_DIR" in err["message"]
        assert sorted(p.name for p in metrics.iterdir()) == ["01_data_loading.json"]  # no partial, no lock
        assert json.loads((metrics / "01_data_loading.json").read_text()) == {"metrics": {"acc": 0.5}}
    finally:
        for folder in (top, *top.rglob("*")):
            if folder.is_dir():
                folder.chmod(0o755)
        subprocess.run(["rm", "-rf", str(top)], check=False)


def test_build_dir_under_a_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "build").write_text("not a folder")
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "build"))
    with pytest.raises(DiskWriteError, match="TLCOURSE_BUILD_DIR") as info:
        results.record("01_data_loading", {"acc": 0.9})
    assert info.value.errno == errno.ENOTDIR and str(tmp_path / "build") in str(info.value)
    with pytest.raises(OSError, match="part of the path is a file"):
        atomic_write_text(tmp_path / "build" / "report.html", "x")
    assert (tmp_path / "build").read_text() == "not a folder"


def test_atomic_writes_get_the_permissions_a_plain_open_gives(tmp_path: Path) -> None:
    """mkstemp creates 0600 files; a bundle or checkpoint shared with a classroom must not be
    owner-only when a plain ``open(path, "w")`` would not have made it so."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert os.stat(written).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
