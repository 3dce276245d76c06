"""Draft-mode JPEG decoding in tlcourse.data.load_rgb: large JPEGs decode at a reduced DCT scale
that keeps both sides at least ``draft_size``; small ones, other formats and ``draft_size=None``
decode in full; EXIF orientation still applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlcourse.data import images, load_rgb


def _jpeg(path: Path, size: tuple[int, int], orientation: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(path, quality=90, exif=exif)
    return path


def test_large_jpeg_decodes_at_the_smallest_scale_that_keeps_the_size(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "phone.jpg", (2400, 1800))
    assert load_rgb(path, draft_size=None).size == (2400, 1800)
    assert load_rgb(path, draft_size=200).size == (300, 225)  # 1/8: both sides still >= 200
    assert load_rgb(path, draft_size=300).size == (600, 450)  # 1/8 would give 225 < 300: 1/4
    assert load_rgb(path).size == (600, 450)  # the default, DRAFT_MIN_SIDE = 320
    assert images.DRAFT_MIN_SIDE == 320


def test_draft_output_looks_like_the_full_decode_resized(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "phone.jpg", (2400, 1800))
    drafted = np.asarray(load_rgb(path, draft_size=300), dtype=np.float64)
    full = np.asarray(load_rgb(path, draft_size=None).resize((600, 450), Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(drafted - full).mean() < 3.0


def test_small_images_other_formats_and_orientation(tmp_path: Path) -> None:
    small = _jpeg(tmp_path / "small.jpg", (500, 400))
    assert load_rgb(small).size == (500, 400)  # less than twice 320 on a side: in full
    png = tmp_path / "big.png"
    Image.new("RGB", (1600, 1200)).save(png)
    assert load_rgb(png).size == (1600, 1200)  # draft is a JPEG decoder feature
    turned = _jpeg(tmp_path / "turned.jpg", (2400, 1800), orientation=6)  # "rotate 90" tag
    assert load_rgb(turned, draft_size=300).size == (450, 600)
    with pytest.raises(ValueError, match="draft_size"):
        load_rgb(turned, draft_size=0)
