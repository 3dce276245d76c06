"""Downloads and archive extraction, offline: a local HTTP server stands in for the internet.

A download is all or nothing (no file, not even ``.part``, after any failure), and an archive
member that would land outside the target folder is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from tlcourse import data

BODY = b"course data " * 1000


def leftovers(folder: Path) -> list[str]:
    """Everything in a folder, including hidden temp files and folders."""
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- checksums


def test_sha256sum_and_verify_file_accept_the_right_digests(tmp_path: Path) -> None:
    file = tmp_path / "f.bin"
    file.write_bytes(BODY)
    assert data.sha256sum(file) == hashlib.sha256(BODY).hexdigest()
    data.verify_file(file, sha256=hashlib.sha256(BODY).hexdigest(), md5=hashlib.md5(BODY).hexdigest())


def test_verify_file_reports_expected_and_actual_digest(tmp_path: Path) -> None:
    file = tmp_path / "f.bin"
    file.write_bytes(BODY)
    with pytest.raises(data.ChecksumError, match=hashlib.md5(BODY).hexdigest()):
        data.verify_file(file, md5="0" * 32)
    with pytest.raises(ValueError, match="needs a sha256 or an md5"):
        data.verify_file(file)


# ----------------------------------------------------------------------------- downloads


def test_download_with_good_checksum_lands_under_the_final_name(local_http_server, tmp_path: Path) -> None:
    url = local_http_server.serve("/file.bin", BODY)
    dest = tmp_path / "sub" / "file.bin"
    result = data.download_url(
        url, dest, sha256=hashlib.sha256(BODY).hexdigest(), md5=hashlib.md5(BODY).hexdigest(),
        progress=False,
    )
    assert result == dest
    assert dest.read_bytes() == BODY
    assert leftovers(dest.parent) == ["file.bin"]


def test_checksum_mismatch_leaves_no_file_and_no_part(local_http_server, tmp_path: Path) -> None:
    url = local_http_server.serve("/file.bin", BODY)
    with pytest.raises(data.DownloadError, match="checksum") as info:
        data.download_url(url, tmp_path / "file.bin", sha256="0" * 64, progress=False)
    assert "TLCOURSE_MIRROR" in str(info.value)
    assert leftovers(tmp_path) == []


def test_truncated_transfer_is_an_error_and_leaves_nothing(local_http_server, tmp_path: Path) -> None:
    # The server promises more bytes than it sends, then closes: what a dropped connection does.
    url = local_http_server.serve("/cut.bin", BODY, claimed_length=len(BODY) + 5000)
    with pytest.raises(data.DownloadError, match=f"{len(BODY)} of {len(BODY) + 5000} bytes"):
        data.download_url(url, tmp_path / "cut.bin", progress=False)
    assert leftovers(tmp_path) == []


def test_http_404_is_a_download_error(local_http_server, tmp_path: Path) -> None:
    with pytest.raises(data.DownloadError, match="HTTP 404"):
        data.download_url(local_http_server.url("/missing.zip"), tmp_path / "m.zip", progress=False)
    assert leftovers(tmp_path) == []


def test_connection_refused_fails_fast_with_one_line_reason(refused_url: str, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(data.DownloadError) as info:
        data.download_url(refused_url, tmp_path / "x.zip", timeout=5, progress=False)
    assert time.monotonic() - start < 5
    assert "refused" in info.value.reason and "\n" not in info.value.reason
    assert info.value.__cause__ is None  # no chained socket traceback for the learner to read
    assert leftovers(tmp_path) == []


def test_unresolvable_host_is_a_download_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(data.download.socket, "getaddrinfo", no_dns)
    with pytest.raises(data.DownloadError, match="resolve"):
        data.download_url("https://example.invalid/x.npz", tmp_path / "x.npz", progress=False)


# ----------------------------------------------------------------------------- safe extraction


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


def make_tar(path: Path, files: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> Path:
    """A tar.gz with regular ``files`` and ``links`` name -> (tarfile type, target)."""
    links = links or {}
    with tarfile.open(path, "w:gz") as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
        for name, (kind, target) in links.items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    return path


def test_safe_extract_zip_returns_the_top_folder(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"set/train/a/1.jpg": b"1", "set/train/b/2.jpg": b"2"})
    dest = tmp_path / "out"
    assert data.safe_extract(archive, dest) == dest / "set"
    assert (dest / "set/train/b/2.jpg").read_bytes() == b"2"
    assert leftovers(dest) == ["set"]  # the temporary folder is gone


def test_safe_extract_tar_keeps_links_that_stay_inside(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "a.tar.gz", {"set/x.txt": b"x"}, {"set/sub/link": (tarfile.SYMTYPE, "../x.txt")}
    )
    top = data.safe_extract(archive, tmp_path / "out")
    assert (top / "sub/link").read_bytes() == b"x"


@pytest.mark.parametrize(
    "members",
    [
        {"ok/1.txt": b"1", "../evil.txt": b"evil"},
        {"ok/1.txt": b"1", "ok/../../evil.txt": b"evil"},
        {"ok/1.txt": b"1", "/tmp/evil.txt": b"evil"},
    ],
    ids=["dotdot", "nested-dotdot", "absolute"],
)
def test_zip_member_escaping_the_folder_is_refused(tmp_path: Path, members: dict[str, bytes]) -> None:
    archive = make_zip(tmp_path / "bad.zip", members)
    dest = tmp_path / "inner" / "out"
    with pytest.raises(data.UnsafeArchiveError):
        data.safe_extract(archive, dest)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "inner" / "evil.txt").exists()
    assert not dest.exists()  # refused before anything (even a temp folder) was written


@pytest.mark.parametrize(
    "files, links",
    [
        ({"ok/1.txt": b"1"}, {"ok/link": (tarfile.SYMTYPE, "../../evil.txt")}),
        ({"ok/1.txt": b"1"}, {"ok/link": (tarfile.SYMTYPE, "/etc/passwd")}),
        ({"ok/1.txt": b"1"}, {"ok/hard": (tarfile.LNKTYPE, "../outside.txt")}),
        ({"ok/1.txt": b"1", "../evil.txt": b"evil"}, {}),
        ({"ok/1.txt": b"1", "/abs/evil.txt": b"evil"}, {}),
    ],
    ids=["escaping-symlink", "absolute-symlink", "escaping-hardlink", "dotdot", "absolute"],
)
def test_tar_member_escaping_the_folder_is_refused(tmp_path: Path, files: dict, links: dict) -> None:
    archive = make_tar(tmp_path / "bad.tar.gz", files, links)
    dest = tmp_path / "inner" / "out"
    with pytest.raises(data.UnsafeArchiveError):
        data.safe_extract(archive, dest)
    assert not dest.exists()
    assert leftovers(tmp_path) == ["bad.tar.gz"]


def test_interrupted_extraction_leaves_no_half_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_zip(tmp_path / "a.zip", {"set/1.txt": b"1", "set/2.txt": b"2"})
    real_extract = zipfile.ZipFile.extract

    def extract_one_then_crash(self: zipfile.ZipFile, path: str | os.PathLike[str]) -> None:
        real_extract(self, "set/1.txt", path)
        raise KeyboardInterrupt  # the learner pressed Ctrl-C half-way

    monkeypatch.setattr(zipfile.ZipFile, "extractall", extract_one_then_crash)
    dest = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        data.safe_extract(archive, dest)
    assert leftovers(dest) == []


def test_safe_extract_does_not_overwrite_an_existing_folder(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"set/1.txt": b"new"})
    (tmp_path / "out" / "set").mkdir(parents=True)
    (tmp_path / "out" / "set" / "1.txt").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        data.safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "set" / "1.txt").read_bytes() == b"old"
    assert leftovers(tmp_path / "out") == ["set"]


def test_safe_extract_rejects_a_file_that_is_no_archive(tmp_path: Path) -> None:
    not_archive = tmp_path / "x.zip"
    not_archive.write_bytes(os.urandom(100))
    with pytest.raises(ValueError, match="neither a zip nor a tar"):
        data.safe_extract(not_archive, tmp_path / "out")
