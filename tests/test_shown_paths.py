"""Outputs name paths relative to the project, the mirror or the home folder, never as this machine's
absolute path (paths.shown, used by tables and logs)."""

from __future__ import annotations

from pathlib import Path

from tlcourse import paths, tables


def test_paths_inside_the_project_mirror_and_home_are_shown_relative(tmp_path, monkeypatch):
    root, mirror, home = tmp_path / "course", tmp_path / "usb" / "datasets", tmp_path / "home"
    for folder in (root, mirror, home):
        folder.mkdir(parents=True)
    monkeypatch.setenv("TLCOURSE_ROOT", str(root))
    monkeypatch.setenv(paths.MIRROR_ENV, str(mirror))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert paths.shown(root / "data" / "cifar10-jpg") == "data/cifar10-jpg"
    assert paths.shown(mirror / "breastmnist.npz") == "$TLCOURSE_MIRROR/breastmnist.npz"
    assert paths.shown(home / "photos" / "cats") == "home/photos/cats"  # the current folder comes before home
    monkeypatch.chdir(root)
    assert paths.shown(home / "photos") == "~/photos"
    assert paths.shown(root) == "."
    assert paths.shown("relative/already") == "relative/already"
    assert paths.shown("/elsewhere/entirely") == "/elsewhere/entirely"


def test_tables_show_path_cells_relative(tmp_path, monkeypatch):
    monkeypatch.setenv("TLCOURSE_ROOT", str(tmp_path))
    text = str(tables.table([{"name": "x", "path": tmp_path / "data" / "x"}]))
    assert "data/x" in text and str(tmp_path) not in text
    assert str(tables.table([{"path": Path("a/b")}])).splitlines()[-1] == "a/b"
