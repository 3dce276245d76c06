"""Downloading one URL to a file, all or nothing, with a timeout that also covers DNS.

:func:`download_url` is the only code in the package that talks to the network; :mod:`.fetch`
calls it when a dataset is neither in ``data/`` nor in the mirror. The transfer, its progress bar
and the hash check are ``pooch``'s (the field's tool for fetching data files); the course adds
what pooch does not do: a DNS timeout, an fsync-ed atomic placement (:func:`tlcourse._io.atomic_path`)
and one-line reasons that end in how to work offline (:class:`DownloadError`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pooch
import requests

from tlcourse._io import DiskWriteError, atomic_path
from tlcourse.data.checksums import verify_file
from tlcourse.data.registry import ChecksumError, DownloadError

__all__ = ["download_url"]


def _check_host_resolves(url: str, timeout: float) -> None:
    """Fail within ``timeout`` when the host name cannot be resolved.

    requests' timeout covers connecting and reading but not the DNS lookup, which on a machine
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


def _chain(err: BaseException) -> list[BaseException]:
    """``err``, its causes and the exceptions requests/urllib3 keep in their ``args``."""
    found: list[BaseException] = []
    todo = [err]
    while todo:
        current = todo.pop(0)
        if current in found:
            continue
        found.append(current)
        todo += [a for a in current.args if isinstance(a, BaseException)]
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
    return found


def _describe_failure(err: BaseException, timeout: float) -> str:
    """One line for a network error, instead of a requests/urllib3 traceback."""
    chain = _chain(err)
    for e in chain:
        # urllib3 2 checks Content-Length: a connection closed early is an IncompleteRead.
        partial, missing = getattr(e, "partial", None), getattr(e, "expected", None)
        if isinstance(partial, int) and isinstance(missing, int):
            return f"the transfer was cut off after {partial} of {partial + missing} bytes"
    if isinstance(err, requests.HTTPError) and err.response is not None:
        return f"HTTP {err.response.status_code} {err.response.reason}"
    if any(isinstance(e, (TimeoutError, socket.timeout, requests.Timeout)) for e in chain) \
            or "timed out" in str(err):
        return f"no answer within {timeout:g} s (timed out)"
    if any(isinstance(e, socket.gaierror) for e in chain):
        return f"cannot resolve the host name, no network? ({' '.join(str(err).split())[:160]})"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in str(err):
        return "connection refused (nothing listens at that address, or a firewall said no)"
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


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

    ``pooch.retrieve`` streams the body (with a progress bar) and checks ``sha256`` (else ``md5``);
    a second checksum, when both are given, is checked here. The file appears under ``dest`` only
    once everything checked out (:func:`tlcourse._io.atomic_path`). On any failure nothing is left
    behind and :class:`DownloadError` explains why in one line.
    """
    dest = Path(dest)
    known_hash = f"sha256:{sha256}" if sha256 else (f"md5:{md5}" if md5 else None)
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=timeout,
                                      headers={"User-Agent": "tlcourse"})
    pooch.get_logger().setLevel(logging.WARNING)  # no "Downloading ... to ..." chatter
    try:
        _check_host_resolves(url, timeout)
        with atomic_path(dest) as partial:
            partial.unlink()  # pooch keeps an existing file; it must download into this name
            pooch.retrieve(url, known_hash=known_hash, fname=partial.name, path=partial.parent,
                           downloader=downloader, progressbar=progress)
            if sha256 and md5:
                verify_file(partial, md5=md5)
    except DiskWriteError:
        raise  # a full or read-only data folder is not a network problem
    except ChecksumError as err:
        raise DownloadError(url, f"the downloaded file failed its checksum: {err}") from None
    except ValueError as err:  # pooch: "... hash of downloaded file (...) does not match ..."
        if "does not match" not in str(err):
            raise
        raise DownloadError(url, f"the downloaded file failed its checksum: {err}") from None
    except (OSError, requests.RequestException) as err:
        raise DownloadError(url, _describe_failure(err, timeout)) from None
    return dest
