"""File checksums: the sha256/md5 of a file, and a check against the expected value.

Every dataset file the course uses is verified before it is trusted (see :mod:`.fetch`), and
:func:`tlcourse.data.find_duplicates` groups files by their sha256.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tlcourse.data.registry import ChecksumError

__all__ = ["CHUNK_BYTES", "file_digest", "sha256sum", "verify_file"]

#: Files and downloads are read in pieces of this size, so large archives never sit in memory.
CHUNK_BYTES = 1 << 20


def file_digest(path: str | os.PathLike[str], algorithm: str) -> str:
    """The ``hashlib`` ``algorithm`` digest of a file as lowercase hex, read in chunks.

    ``usedforsecurity=False`` keeps md5 working on FIPS machines: it only detects corruption.
    """
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256sum(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file as lowercase hex, read in chunks so large archives fit in memory."""
    return file_digest(path, "sha256")


def verify_file(
    path: str | os.PathLike[str], sha256: str | None = None, md5: str | None = None
) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the given sha256 and/or md5.

    At least one checksum must be given: silently "verifying" against nothing would hide bugs.
    """
    if sha256 is None and md5 is None:
        raise ValueError("verify_file needs a sha256 or an md5 to check against")
    path = Path(path)
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual != expected.lower():
            raise ChecksumError(
                f"{path} is corrupt or a different file: its {algorithm} is {actual}, "
                f"expected {expected}"
            )
