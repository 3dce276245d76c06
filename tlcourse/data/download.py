"""Downloading one URL to a file, all or nothing, with a timeout that also covers DNS.

:func:`download_url` is the only code in the package that talks to the network; :mod:`.fetch`
calls it when a dataset is neither in ``data/`` nor in the mirror.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from tqdm.auto import tqdm

from tlcourse._io import atomic_path
from tlcourse.data.checksums import CHUNK_BYTES, verify_file
from tlcourse.data.registry import ChecksumError, DownloadError

__all__ = ["download_url"]


def _check_host_resolves(url: str, timeout: float) -> None:
    """Fail within ``timeout`` when the host name cannot be resolved.

    urllib's timeout covers connecting and reading but not the DNS lookup, which on a machine
    with a broken network can hang for half a minute. Skipped behind a proxy, where the proxy
    resolves names.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or parts.scheme in urllib.request.getproxies():
        return
    outcome: dict[str, OSError] = {}

    def resolve() -> None:
        try:
            socket.getaddrinfo(parts.hostname, None)
        except OSError as err:
            outcome["error"] = err

    # A daemon thread, so a lookup that never returns cannot keep the interpreter alive.
    resolver = threading.Thread(target=resolve, daemon=True)
    resolver.start()
    resolver.join(timeout)
    if resolver.is_alive():
        raise TimeoutError(f"could not resolve {parts.hostname} within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]


def _content_length(response: Any) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _copy_with_progress(
    source: BinaryIO, target: BinaryIO, total: int | None, progress: bool, label: str
) -> int:
    """Copy a response body into a file in chunks, showing a byte progress bar; returns bytes."""
    received = 0
    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress
    ) as bar:
        while chunk := source.read(CHUNK_BYTES):
            target.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


def _describe_failure(err: BaseException, timeout: float) -> str:
    """One line for a network error, instead of a socket traceback."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout:g} s" + (f" ({err})" if str(err) else "")
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the host name, no network? ({err})"
    if isinstance(err, ConnectionRefusedError):
        return f"connection refused ({err})"
    return f"{type(err).__name__}: {err}"


def download_url(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` all or nothing, and return ``dest``.

    The body streams into a temporary file next to ``dest`` (:func:`tlcourse._io.atomic_path`)
    that replaces ``dest`` only after its length (when the server sent a Content-Length) and
    checksum check out, so an interrupted or corrupt download never appears under the final
    name. On any failure the temporary file is deleted and :class:`DownloadError` explains why
    in one line.
    """
    dest = Path(dest)
    try:
        _check_host_resolves(url, timeout)
        request = urllib.request.Request(url, headers={"User-Agent": "tlcourse"})
        with atomic_path(dest) as partial:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                expected = _content_length(response)
                with open(partial, "wb") as file:
                    received = _copy_with_progress(response, file, expected, progress, dest.name)
            # http.client returns a short body without complaint when the server closes early.
            if expected is not None and received != expected:
                raise DownloadError(
                    url, f"the transfer was cut off after {received} of {expected} bytes"
                )
            if sha256 is not None or md5 is not None:
                verify_file(partial, sha256=sha256, md5=md5)
    except DownloadError:
        raise
    except ChecksumError as err:
        raise DownloadError(url, f"the downloaded file failed its checksum: {err}") from None
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(url, _describe_failure(err, timeout)) from None
    return dest
