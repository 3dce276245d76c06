"""Two-class train/val image folders for timing ``python -m tlcourse fit`` (issue 28).

:func:`cifar_fit_folder` writes ``DEST/{train,val}/{cat,dog}/*.jpg`` straight from the
mirror's CIFAR-10 JPEG zip (``cifar10-jpg.zip``, see the mirror's README): the first images of
the train split for ``train`` and of the test split for ``val``, so folders of different sizes
are nested and the same size is always the same folder.

    python -m benchmarks.fit_folders 400 /tmp/fit-400
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

__all__ = ["CLASSES", "cifar_fit_folder"]

CLASSES = ("cat", "dog")


def _mirror_zip() -> Path:
    root = os.environ.get("TLCOURSE_MIRROR")
    if not root:
        raise FileNotFoundError("Set TLCOURSE_MIRROR to the datasets mirror (the folder holding cifar10-jpg.zip).")
    path = Path(root) / "cifar10-jpg.zip"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; copy cifar10-jpg.zip into the mirror (see its README).")
    return path


def cifar_fit_folder(n_images: int, dest: str | os.PathLike[str], *, val_share: float = 0.2,
                     zip_path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``n_images`` cat/dog JPEGs as ``dest/{train,val}/<class>/`` and return ``dest``.

    ``val_share`` of each class goes to ``val`` (from CIFAR's test split, at most 1,000 per class),
    the rest to ``train`` (from CIFAR's train split, at most 5,000 per class). The bytes are
    copied unchanged. An existing ``dest`` with the same file count is reused as it is.
    """
    per_class = n_images // len(CLASSES)
    n_val = round(per_class * val_share)
    n_train = per_class - n_val
    if n_val > 1000 or n_train > 5000 or n_val < 1:
        raise ValueError(f"{n_images} images with val_share={val_share} do not fit CIFAR-10's cat/dog "
                         "(5,000 train and 1,000 test per class); choose 10 to 12,000 images.")
    dest = Path(dest)
    if dest.is_dir() and sum(1 for _ in dest.rglob("*.jpg")) == per_class * len(CLASSES):
        return dest
    with zipfile.ZipFile(zip_path or _mirror_zip()) as z:
        names = sorted(z.namelist())
        for split, source, count in (("train", "train", n_train), ("val", "test", n_val)):
            for cls in CLASSES:
                prefix = f"cifar10-jpg/{source}/{cls}/"
                chosen = [n for n in names if n.startswith(prefix) and n.endswith(".jpg")][:count]
                folder = dest / split / cls
                folder.mkdir(parents=True, exist_ok=True)
                for name in chosen:
                    (folder / name.rsplit("/", 1)[1]).write_bytes(z.read(name))
    return dest


if __name__ == "__main__":
    print(cifar_fit_folder(int(sys.argv[1]), sys.argv[2]))
