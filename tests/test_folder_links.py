"""Links in user image folders: followed, but no folder scanned twice and no file counted twice.

A folder with a link back to an ancestor used to be walked again and again, so one image turned
up many times, in train and in test. Each test builds a small ``root/<class>/<image>`` folder
with links in ``tmp_path`` and checks the exact samples, labels and the report of what was left
out (``.skipped`` and the one :class:`SkippedFilesWarning`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from PIL import Image

from tlcourse import data


def _can_symlink(folder: Path) -> bool:
    try:
        os.symlink("target", folder / "probe")
    except (OSError, NotImplementedError):
        return False
    (folder / "probe").unlink()
    return True


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``tmp_path/images`` with ``cat/`` and ``dog/``, four distinct PNGs each."""
    if not _can_symlink(tmp_path):
        pytest.skip("this file system or user cannot create symbolic links")
    folder = tmp_path / "images"
    for label, name in enumerate(("cat", "dog")):
        for i in range(4):
            write_png(folder / name / f"{name}{i}.png", shade=40 * label + 8 * i)
    return folder


def write_png(path: Path, shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 255 - shade, 128)).save(path)
    return path


def link(path: Path, target: str | Path) -> Path:
    """``path`` -> ``target`` (a relative target is relative to ``path``'s folder, as in ``ln -s``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path, target_is_directory=(path.parent / target).is_dir())
    return path


def load(root: Path, *, empty: tuple[str, ...] = ()) -> tuple[data.CheckedImageFolder, str]:
    """The dataset and the text of its one skipped-files warning; ``empty`` names the classes
    that must come with an EmptyClassWarning (and no others may)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dataset = data.folder_dataset(root)
    skipped = [str(w.message) for w in record if issubclass(w.category, data.SkippedFilesWarning)]
    empty_warnings = [str(w.message) for w in record if issubclass(w.category, data.EmptyClassWarning)]
    assert len(skipped) == 1
    assert len(empty_warnings) == len(empty)
    assert all(f"{name!r}" in text for name, text in zip(empty, empty_warnings))
    return dataset, skipped[0]


def samples(dataset: data.CheckedImageFolder, root: Path) -> list[tuple[str, int]]:
    return [(Path(path).relative_to(root).as_posix(), label) for path, label in dataset.samples]


def reasons(dataset: data.CheckedImageFolder, root: Path) -> dict[str, str]:
    return {bad.path.relative_to(root).as_posix(): bad.reason for bad in dataset.skipped}


ORIGINAL = [(f"cat/cat{i}.png", 0) for i in range(4)] + [(f"dog/dog{i}.png", 1) for i in range(4)]


@pytest.mark.parametrize(
    ("link_path", "target"),
    [
        ("cat/again", ".."),  # the image folder itself, from inside a class
        ("dog/deeper/self", ".."),  # dog/, two levels up from the link
        ("everything", "."),  # next to the class folders: a cycle, not a class
    ],
)
def test_a_link_to_an_ancestor_is_a_cycle_reported_once_and_not_followed(
    root: Path, link_path: str, target: str
) -> None:
    link(root / link_path, target)

    dataset, warning = load(root)

    assert dataset.classes == ["cat", "dog"]
    assert samples(dataset, root) == ORIGINAL
    assert dataset.targets == [0] * 4 + [1] * 4
    found = reasons(dataset, root)
    assert list(found) == [link_path]
    assert "a cycle" in found[link_path]
    assert warning.count(link_path) == 1


def test_a_link_between_class_folders_leaves_each_image_with_its_own_class(root: Path) -> None:
    write_png(root / "dog" / "puppies" / "puppy.png", shade=200)
    link(root / "cat" / "dogs", "../dog")  # a whole other class
    link(root / "cat" / "puppies", "../dog/puppies")  # a folder inside another class
    link(root / "kitty", "cat")  # a second class folder that is the first one

    dataset, warning = load(root, empty=("kitty",))

    assert dataset.classes == ["cat", "dog", "kitty"]
    assert samples(dataset, root) == [*ORIGINAL, ("dog/puppies/puppy.png", 1)]
    assert dataset.scan.counts() == {"cat": 4, "dog": 5, "kitty": 0}
    found = reasons(dataset, root)
    assert set(found) == {"cat/dogs", "cat/puppies", "kitty"}
    assert "dog" in found["cat/dogs"] and "scanned where it is" in found["cat/dogs"]
    assert "class 'cat'" in found["kitty"]
    for name in found:
        assert name in warning, name


def test_a_file_is_one_sample_and_keeps_the_label_of_its_own_place(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    write_png(outside / "shared.png", shade=222)
    write_png(outside / "more" / "extra.png", shade=111)
    link(root / "cat" / "a_dog.png", "../dog/dog2.png")  # a file of another class
    link(root / "cat" / "twice.png", "cat1.png")  # the same class, under a second name
    link(root / "cat" / "z_shared.png", outside / "shared.png")  # outside the tree: first wins
    link(root / "dog" / "shared.png", outside / "shared.png")
    link(root / "dog" / "more", outside / "more")  # a folder outside the tree is followed
    link(root / "dog" / "more_again", outside / "more")  # ... once

    dataset, warning = load(root)

    assert samples(dataset, root) == [
        *ORIGINAL[:4], ("cat/z_shared.png", 0), *ORIGINAL[4:], ("dog/more/extra.png", 1),
    ]
    found = reasons(dataset, root)
    assert set(found) == {"cat/a_dog.png", "cat/twice.png", "dog/shared.png", "dog/more_again"}
    assert "dog/dog2.png" in found["cat/a_dog.png"]
    assert "cat/cat1.png" in found["cat/twice.png"]
    assert "cat/z_shared.png" in found["dog/shared.png"]
    assert "dog/more" in found["dog/more_again"]
    for name in found:
        assert name in warning, name


def test_a_dangling_link_is_reported_as_a_broken_link(root: Path) -> None:
    link(root / "cat" / "gone.png", "deleted.png")
    link(root / "dog" / "loop_a.png", "loop_b.png")  # two links pointing at each other
    link(root / "dog" / "loop_b.png", "loop_a.png")
    link(root / "dog" / "gone_folder", "../nowhere")

    dataset, warning = load(root)

    assert samples(dataset, root) == ORIGINAL
    found = reasons(dataset, root)
    assert set(found) == {"cat/gone.png", "dog/loop_a.png", "dog/loop_b.png", "dog/gone_folder"}
    assert all("broken link" in reason for reason in found.values())
    assert "broken link" in warning
    for name in found:
        assert warning.count(name) == 1, name
