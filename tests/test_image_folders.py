"""Image folders with bad files, odd images and wrong layouts (``tlcourse.data.folder_dataset``,
``load_rgb``). The rule: a clear error that says what to do, or a skip the user sees (a warning naming
the file), never a crash deep inside PyTorch, a hang, or a silent wrong result.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from tlcourse import data, models

TO_TENSOR = transforms.ToTensor()


def image_bytes(mode: str = "RGB", size: tuple[int, int] = (8, 8), fmt: str = "JPEG",
                colour: object = None, **save_args: object) -> bytes:
    if colour is None:
        colour = 128 if mode in ("L", "P", "I;16", "1") else (200, 30, 60, 255)[: len(mode)]
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def noise_jpeg(size: int = 64, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def two_classes(root: Path, per_class: int = 2, names: tuple[str, str] = ("cat", "dog")) -> list[Path]:
    """``root/<name>/<i>.jpg`` for two classes of good images."""
    return [
        write(root / name / f"{i}.jpg", image_bytes(colour=(40 * i, 100, 200 - 40 * i)))
        for name in names for i in range(per_class)
    ]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no pixel data:
    tiny on disk, gigabytes once decoded (a decompression bomb)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def load_quietly(root: Path, transform=None) -> data.CheckedImageFolder:
    return data.folder_dataset(root, transform=transform, warn=False)


# ---------------------------------------------------------------- bad files: reported once with their path, and skipped
# A corrupt/truncated JPEG, a zero-byte file, non-image files and a GIF (an image: its first frame).


def test_every_bad_file_is_reported_once_with_its_path_and_skipped(tmp_path):
    root = tmp_path / "pets"
    good = two_classes(root)
    whole = noise_jpeg()
    bad = {
        "cat/truncated.jpg": whole[: len(whole) // 2],
        "cat/empty.jpg": b"",
        "cat/notes.txt": b"remember to label the dogs",
        "cat/.DS_Store": b"\x00\x00\x00\x01Bud1" + b"\x00" * 64,
        "dog/Thumbs.db": bytes.fromhex("D0CF11E0A1B11AE1") + b"\x00" * 512,
        "dog/._0.jpg": b"\x00\x05\x16\x07 AppleDouble resource fork",
    }
    for name, content in bad.items():
        write(root / name, content)
    gif = write(root / "dog" / "party.gif", image_bytes("P", fmt="GIF", colour=5))

    with pytest.warns(data.SkippedFilesWarning) as record:
        dataset = data.folder_dataset(root, transform=TO_TENSOR)
    skipped_warnings = [w for w in record if issubclass(w.category, data.SkippedFilesWarning)]
    assert len(skipped_warnings) == 1
    message = str(skipped_warnings[0].message)
    for name in bad:
        assert message.count(name) == 1, name  # each bad file named exactly once
    assert str(root) in message
    for path in [*good, gif]:
        assert path.relative_to(root).as_posix() not in message

    reasons = {b.path.relative_to(root).as_posix(): b.reason for b in dataset.skipped}
    assert set(reasons) == set(bad)
    assert "truncated" in reasons["cat/truncated.jpg"]
    assert "empty file" in reasons["cat/empty.jpg"]
    assert all("not an image" in reasons[n] for n in ("cat/notes.txt", "cat/.DS_Store", "dog/Thumbs.db", "dog/._0.jpg"))

    assert sorted(Path(p) for p, _ in dataset.samples) == sorted([*good, gif])
    for image, _ in DataLoader(dataset, batch_size=5):  # every remaining item loads
        assert image.shape[1:] == (3, 8, 8)


def test_gif_gives_its_first_frame_as_rgb(tmp_path):
    root = tmp_path / "folder"
    two_classes(root)
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    path = write(root / "cat" / "animated.gif", buffer.getvalue())
    image = data.load_rgb(path)
    assert image.mode == "RGB" and image.getpixel((4, 4)) == (255, 0, 0)


def test_course_dataset_reports_brain_mri_empty_files(dataset_dirs):
    root = dataset_dirs.data / "brain-mri"
    write(root / "yes" / "Y1.jpg", image_bytes())
    write(root / "no" / "N1.jpg", image_bytes())
    write(root / "no" / "17", b"")  # as the 49 empty extension-less files of the real mirror
    with pytest.warns(data.SkippedFilesWarning, match=r"empty file \(0 bytes\): no/17"):
        dataset = data.course_dataset("brain-mri")
    assert len(dataset) == 2 and dataset.classes == ["no", "yes"]


def test_file_broken_after_the_scan_names_the_file(tmp_path):
    root = tmp_path / "folder"
    files = two_classes(root)
    dataset = load_quietly(root)
    files[0].write_bytes(files[0].read_bytes()[:20])
    with pytest.raises(OSError, match=rf"(?s){files[0].name}.*create the dataset again"):
        dataset[0]


# ---------------------------------------------------------------- odd images: correct RGB, or a clear refusal


def exif_rotated_jpeg() -> bytes:
    """16x8 stored sideways: red left half, blue right half, EXIF orientation 6 (turn 90 deg
    clockwise to view). Upright it is 8 wide, 16 high, red on top."""
    stored = Image.new("RGB", (16, 8), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, subsampling=0, exif=exif)
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(1, 256).repeat(2, axis=0)  # 0..65535
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    return buffer.getvalue()


def half_transparent_png() -> bytes:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent, black underneath
    image.paste((10, 200, 10, 255), (0, 0, 4, 8))  # opaque green left half
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def palette_with_transparency() -> bytes:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


# name -> (file bytes, expected upright size, {pixel: expected RGB (within 12 per channel)})
ODD_IMAGES = {
    "grey.jpg": (image_bytes("L", colour=90), (8, 8), {(4, 4): (90, 90, 90)}),
    "rgba.png": (half_transparent_png(), (8, 8), {(1, 4): (10, 200, 10), (6, 4): (255, 255, 255)}),
    "palette.png": (image_bytes("P", fmt="PNG", colour=0), (8, 8), {}),
    "palette-transparent.png": (palette_with_transparency(), (8, 8), {(1, 1): (200, 0, 0), (6, 6): (255, 255, 255)}),
    "sixteen-bit.png": (sixteen_bit_png(), (256, 2), {(0, 0): (0, 0, 0), (128, 0): (128, 128, 128), (255, 1): (255, 255, 255)}),
    "cmyk.jpg": (image_bytes("CMYK", colour=(255, 0, 0, 0)), (8, 8), {(4, 4): (0, 255, 255)}),
    "exif-rotated.jpg": (exif_rotated_jpeg(), (8, 16), {(4, 3): (255, 0, 0), (4, 12): (0, 0, 255)}),
    "one-pixel.png": (image_bytes("RGB", (1, 1), "PNG", colour=(1, 2, 3)), (1, 1), {(0, 0): (1, 2, 3)}),
}


@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_odd_images_become_correct_rgb(tmp_path, name):
    content, size, pixels = ODD_IMAGES[name]
    root = tmp_path / "folder"
    two_classes(root)
    path = write(root / "cat" / name, content)
    dataset = load_quietly(root)
    assert not dataset.skipped
    index = [Path(p) for p, _ in dataset.samples].index(path)
    image, _ = dataset[index]
    assert image.mode == "RGB" and image.size == size
    for xy, expected in pixels.items():
        assert np.abs(np.subtract(image.getpixel(xy), expected)).max() <= 12, (xy, image.getpixel(xy))
    tensor = TO_TENSOR(image)
    assert tensor.shape == (3, size[1], size[0]) and tensor.dtype == torch.float32


def test_one_pixel_image_goes_through_the_backbone_transform(tmp_path):
    path = write(tmp_path / "dot.png", image_bytes("RGB", (1, 1), "PNG"))
    transform = models.backbone_spec("efficientnet_lite0").preprocessing().eval_transform()
    tensor = transform(data.load_rgb(path))
    assert tensor.shape == (3, 224, 224) and torch.isfinite(tensor).all()


@pytest.mark.parametrize("side", [20_000, 10_000], ids=["above-2x-limit", "between-1x-and-2x-limit"])
def test_decompression_bomb_is_refused_with_a_reason(tmp_path, side):
    # Pillow raises above twice MAX_IMAGE_PIXELS but only warns between 1x and 2x, and then
    # decoding 10000x10000 would take 300 MB; both are refused, in milliseconds.
    root = tmp_path / "folder"
    two_classes(root)
    bomb = write(root / "dog" / "huge.png", png_header_only(side, side))
    start = time.monotonic()
    with pytest.warns(data.SkippedFilesWarning, match=r"(?s)too large.*MAX_IMAGE_PIXELS.*: dog/huge\.png"):
        dataset = data.folder_dataset(root)
    assert time.monotonic() - start < 5
    assert [b.path for b in dataset.skipped] == [bomb]
    assert "too large" in dataset.skipped[0].reason
    with pytest.raises(Image.DecompressionBombError, match="MAX_IMAGE_PIXELS|decompression bomb"):
        data.load_rgb(bomb)


# ---------------------------------------------------------------- folder structure


def test_empty_class_folder_warns_and_keeps_its_label(tmp_path):
    root = tmp_path / "folder"
    two_classes(root, names=("cat", "dog"))
    (root / "bird").mkdir()
    with pytest.warns(data.EmptyClassWarning, match=r"(?s)'bird' has no usable image.*label 0.*delete"):
        dataset = data.folder_dataset(root)
    # bird keeps label 0, so a validation folder that has birds labels cats and dogs the same.
    assert dataset.classes == ["bird", "cat", "dog"]
    assert sorted(set(dataset.targets)) == [1, 2] and len(dataset) == 4


def test_single_class_is_an_error_that_shows_the_layout(tmp_path):
    root = tmp_path / "folder"
    write(root / "cat" / "0.jpg", image_bytes())
    with pytest.raises(data.ImageFolderError, match=r"(?s)only one class folder, 'cat'.*at least 2 classes.*one subfolder per class"):
        data.folder_dataset(root)


def test_one_class_with_only_bad_files_is_an_error_naming_them(tmp_path):
    root = tmp_path / "folder"
    write(root / "cat" / "0.jpg", image_bytes())
    write(root / "dog" / "0.jpg", b"")
    with pytest.raises(data.ImageFolderError, match=r"(?s)'cat': 1, 'dog': 0.*dog/0\.jpg"):
        data.folder_dataset(root)


def test_images_without_class_folders_is_an_error_that_shows_the_layout(tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        write(root / f"{i}.jpg", image_bytes())
    with pytest.raises(data.ImageFolderError, match=r"(?s)no class folders \(3 file\(s\) directly in it\).*photos/\n.*cat/.*dog/"):
        data.folder_dataset(root)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        data.folder_dataset(tmp_path / "nowhere")


def test_loose_files_and_hidden_folders_are_not_classes(tmp_path):
    root = tmp_path / "folder"
    two_classes(root)
    write(root / "stray.jpg", image_bytes())
    write(root / ".ipynb_checkpoints" / "0-checkpoint.jpg", image_bytes())  # Jupyter makes these
    write(root / "cat" / ".ipynb_checkpoints" / "0-checkpoint.jpg", image_bytes())
    with pytest.warns(data.SkippedFilesWarning) as record:
        dataset = data.folder_dataset(root)
    message = str(record[0].message)
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 4
    assert "stray.jpg: " not in message and "not inside a class folder (ignored): stray.jpg" in message
    assert ".ipynb_checkpoints" in message and "cat/.ipynb_checkpoints" in message


def test_class_names_with_spaces_and_non_ascii_work(tmp_path):
    root = tmp_path / "folder"
    names = ("grand piano", "café", "猫")
    for name in names:
        write(root / name / "photo 1.jpg", image_bytes())
    dataset = load_quietly(root, transform=TO_TENSOR)
    assert dataset.classes == sorted(names)
    images, labels = next(iter(DataLoader(dataset, batch_size=3)))
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 1, 2]
