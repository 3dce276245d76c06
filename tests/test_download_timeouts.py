"""A download that stalls (no answer, or a body that stops halfway) is a timeout error naming the
mirror, and leaves nothing behind. Refused connections, checksum mismatches, truncated bodies,
HTTP 404 and archive safety (members with ../, absolute paths, escaping symlinks) are in
tests/test_download.py.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tlcourse import data


@pytest.fixture
def silent_server():
    """A server on 127.0.0.1 that accepts connections and then says nothing (or, for paths
    with "half", sends headers and half the body, then goes quiet)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)
            request = conn.recv(4096)
            if b"half" in request:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + b"x" * 10000)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("path", ["/silent.zip", "/half.zip"], ids=["no-answer", "stalls-mid-body"])
def test_timeout_is_a_download_error_naming_the_mirror_and_leaves_nothing(silent_server, tmp_path, path):
    dest = tmp_path / "dl"
    dest.mkdir()
    start = time.monotonic()
    with pytest.raises(data.DownloadError, match=r"(?i)timed out.*TLCOURSE_MIRROR"):
        data.download_url(silent_server + path, dest / "file.zip", timeout=0.5, progress=False)
    assert time.monotonic() - start < 5
    assert list(dest.iterdir()) == []  # not even a .part file
