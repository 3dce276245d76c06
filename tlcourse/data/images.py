"""Reading one image file: upright 8-bit RGB from any mode, or one line saying why it is unusable.

:func:`load_rgb` is the loader of every image dataset in the course; :func:`image_problem` is
the check that :func:`tlcourse.data.scan_image_folder` runs on every file of a folder.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from types import EllipsisType
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DRAFT_MIN_SIDE", "Transform", "image_problem", "load_rgb", "to_rgb"]

#: JPEGs are decoded by :func:`load_rgb` at a reduced scale (1/2, 1/4 or 1/8, in the DCT domain:
#: Pillow's ``Image.draft``) as long as both sides stay at least this many pixels, before any
#: resize. 320 is above the largest resize the course's backbones ask for at 224 px (256 for
#: Lite0, 232 for ResNet-50), so the exact resize that follows still downsamples. A 4000x3000
#: phone photo then decodes at 500x375, several times faster than in full; images up to twice
#: this size are decoded in full as before. ``None`` (or ``draft_size=None``) turns it off.
DRAFT_MIN_SIDE: int | None = 320

#: What a dataset applies to each PIL image (a torchvision transform, usually).
Transform = Callable[[Image.Image], Any]


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any mode to 8-bit RGB without silently changing what it shows.

    - grey (``L``, ``1``), ``CMYK``, ``YCbCr``: Pillow's conversion (CMYK JPEGs from Photoshop
      are un-inverted by Pillow when they are read);
    - 16-bit grey (``I;16``, and ``I`` with values above 255, as 16-bit PNGs open): scaled
      from 0..65535 to 0..255. Pillow's own conversion clips at 255, which turns most of a
      16-bit scan white;
    - float (``F``): values in 0..1 are scaled to 0..255, others clipped;
    - transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent colour): composited onto
      white, as a browser shows it. Dropping the alpha channel would reveal whatever colour
      happens to be stored under the transparent pixels (often black).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and pixels.max(initial=0) > 255):
            pixels = pixels / 257.0  # 65535 / 257 = 255
        elif mode == "F" and pixels.max(initial=0) <= 1.0:
            pixels = pixels * 255.0
        grey = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode == "L" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike[str], draft_size: int | None | EllipsisType = ...) -> Image.Image:
    """Open any image as upright RGB: brain-mri mixes L, RGBA and palette files, phones store
    photos sideways with an EXIF "rotate me" tag, and models want 3 channels.

    A GIF gives its first frame. See :func:`to_rgb` for how each mode becomes RGB. A JPEG whose
    sides are both at least twice ``draft_size`` is decoded at 1/2, 1/4 or 1/8 scale, the smallest
    that keeps both sides >= ``draft_size`` (``...``: :data:`DRAFT_MIN_SIDE`; ``None``: always in
    full). The returned image is then smaller than the file says; the aspect ratio is kept.
    """
    if draft_size is ...:
        draft_size = DRAFT_MIN_SIDE
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x its pixel limit; _refuse_huge refuses instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        opened = Image.open(path)
    with opened:
        _refuse_huge(opened)
        if draft_size is not None and opened.format == "JPEG":
            _draft(opened, draft_size)
        # Phones save the sensor's orientation plus a tag saying how to turn it; without this a
        # portrait photo reaches the model lying on its side.
        upright = ImageOps.exif_transpose(opened)
        return to_rgb(upright)


def _draft(image: Image.Image, min_side: int) -> None:
    """Ask libjpeg to decode ``image`` at the smallest DCT scale keeping both sides >= ``min_side``.

    Pillow picks the scale from the requested size; the mode is kept (CMYK stays CMYK for
    :func:`to_rgb`). A request that allows no reduction leaves the image as it is.
    """
    if min_side < 1:
        raise ValueError(f"draft_size must be a positive number of pixels or None, got {min_side}")
    width, height = image.size
    if min(width, height) >= 2 * min_side:
        image.draft(image.mode, (min_side, min_side))


def _refuse_huge(image: Image.Image) -> None:
    """Raise ``Image.DecompressionBombError`` above ``Image.MAX_IMAGE_PIXELS`` (Pillow only warns
    between 1x and 2x the limit, and decoding such a file can take gigabytes of memory)."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        raise Image.DecompressionBombError(
            f"{width}x{height} = {width * height:,} pixels is more than "
            f"PIL.Image.MAX_IMAGE_PIXELS = {limit:,}"
        )


def image_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a usable image (one line), or None when it decodes.

    The whole file is decoded, so a truncated or corrupt file is caught here rather than in the
    middle of an epoch. JPEGs are decoded at 1/8 scale (``Image.draft``), which still reads
    every byte but is several times faster.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            # Pillow warns for 1x..2x its pixel limit; _refuse_huge turns that into a refusal.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _refuse_huge(image)
                if image.format == "JPEG":
                    image.draft(image.mode, (1, 1))
                image.load()
    except UnidentifiedImageError:
        return "not an image (Pillow cannot read this kind of file)"
    except Image.DecompressionBombError as err:
        return (
            f"too large to decode safely, a possible decompression bomb ({err}); shrink it, or "
            f"raise PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS:,}) if you trust it"
        )
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        return f"corrupt or truncated image ({type(err).__name__}: {err})"
    return None
