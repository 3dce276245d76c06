"""Course datasets written out as a learner's plain folders, for notebook 06 and the README.

:func:`write_course_folder` copies the files of a course image-folder dataset (Alien vs
Predator with its ``train/`` and ``validation/`` folders, brain MRI with only ``yes/`` and
``no/``) into a folder of your choice, exactly as a learner's own photos would sit on disk:
no registry, no checksums, whatever files are there (brain MRI's empty files included).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from tlcourse._io import atomic_write_text
from tlcourse.data import locate

__all__ = ["write_course_folder"]

_DONE = ".written-by-tlcourse"  # the stamp file beside a written folder


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def write_course_folder(name: str, dest: str | os.PathLike[str], *, per_class: int | None = None,
                        seed: int = 0) -> Path:
    """Copy course dataset ``name`` to ``dest`` as plain class folders; returns ``dest``.

    ``per_class`` keeps that many files per class and folder (a seeded random choice), for quick
    runs. A folder written before with the same settings is kept as it is.
    """
    source, dest = locate(name), Path(dest)
    stamp, done = f"{name} per_class={per_class} seed={seed}", dest.parent / f".{dest.name}{_DONE}"
    if done.is_file() and done.read_text() == stamp:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    splits = [p for p in _class_folders(source) if p.name in ("train", "val", "validation", "test")]
    rng = np.random.default_rng(seed)
    for folder in splits or [source]:
        for cls in _class_folders(folder):
            files = sorted(p for p in cls.iterdir() if p.is_file())
            if per_class is not None and len(files) > per_class:
                files = [files[i] for i in sorted(rng.choice(len(files), per_class, replace=False))]
            target = dest / folder.relative_to(source) / cls.name
            target.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copyfile(f, target / f.name)
    atomic_write_text(done, stamp)  # beside the folder: inside it, it would be a stray file
    return dest
