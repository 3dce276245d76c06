"""One way to start the course's JupyterLab for a test: `make lab`'s command on a free port.

Used by ``test_lab`` (the course's notebooks/ folder) and ``test_lab_browser`` (a temporary folder
opened in headless Chromium). The server gets a random token, no browser, its own runtime folder
(no connection files in the user's folder), and is always shut down, killed if it hangs.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab: ``base`` URL (``http://127.0.0.1:PORT``) and its ``token``."""

    base: str
    token: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def jupyter_lab(folder: Path, runtime: Path, *, cwd: Path | None = None, extra_flags: Sequence[str] = (),
                env: Mapping[str, str] | None = None, timeout: float = 60) -> Iterator[Lab]:
    """Start ``jupyter lab --ip=127.0.0.1 FOLDER``, wait until ``/api/status`` answers, yield a :class:`Lab`.

    The server's log goes to ``runtime/lab.log`` and its tail is in the failure message when the
    server exits early or does not answer within ``timeout`` seconds.
    """
    runtime.mkdir(parents=True, exist_ok=True)
    token, log_path = secrets.token_hex(16), runtime / "lab.log"

    def start() -> tuple[subprocess.Popen[str], int, Any]:
        port = free_port()  # free when probed; another process may take it first: then start() runs again
        flags = ["--no-browser", f"--port={port}", f"--ServerApp.token={token}", "--ServerApp.port_retries=0",
                 *extra_flags]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--allow-root")  # CI and containers run as root
        log = log_path.open("w")
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("jupyter")), "lab", "--ip=127.0.0.1", *flags, str(folder)],
            cwd=cwd or folder, env={**os.environ, **(env or {}), "JUPYTER_RUNTIME_DIR": str(runtime)},
            stdout=log, stderr=subprocess.STDOUT, text=True,
        )
        return proc, port, log

    proc, port, log = start()
    port_tries = 3
    lab = Lab(f"http://127.0.0.1:{port}", token)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                port_tries -= 1
                if port_tries > 0 and "is not available" in log_path.read_text():  # the port was taken meanwhile
                    log.close()
                    proc, port, log = start()
                    lab = Lab(f"http://127.0.0.1:{port}", token)
                    continue
                raise AssertionError(f"jupyter lab exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                request = urllib.request.Request(f"{lab.base}/api/status",
                                                 headers={"Authorization": f"token {token}"})
                urllib.request.urlopen(request, timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"jupyter lab did not answer on 127.0.0.1 within {timeout:.0f} s: "
                                         f"{log_path.read_text()[-2000:]}") from None
                time.sleep(0.25)
        yield lab
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
