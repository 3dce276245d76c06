"""A small headless-Chromium driver over the DevTools protocol (slide handouts, browser tests).

Debian's ``chromium`` is started with the flags that keep it off the network (no sync, no
component updates, no background requests, no QUIC) and a fresh profile; pages are driven with
``websocket-client`` (a dependency of Jupyter's server). Every console error, uncaught exception and failed
or non-local request is recorded, so a test can assert that a page loaded cleanly and offline. ``python -m tlcourse slides --pdf``
prints the decks with :meth:`Chromium.print_pdf`; tests/headless_chromium.py re-exports this module.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
OFFLINE_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
    "--mute-audio", "--hide-scrollbars",
]


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None (Debian/Ubuntu: ``apt-get install chromium``)."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@dataclass
class PageLog:
    """What a page did while it loaded and ran."""

    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed requests
    requests: list[str] = field(default_factory=list)  # every URL the page asked for


class Chromium:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, binary: str, *, width: int = 1280, height: int = 800, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="tlcourse-chromium-"))
        self.proc = subprocess.Popen(
            [binary, *OFFLINE_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._ids = itertools.count(1)
        self.log = PageLog()
        try:
            self.port = port = self._devtools_port()
            page = self._page_target(port)
            # no Origin header: Chromium refuses DevTools websockets from origins it does not allow
            self.ws = websocket.create_connection(page, timeout=timeout, suppress_origin=True)
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable")
        except Exception:
            self.close()
            raise

    def _devtools_port(self) -> int:
        # Chromium writes the port it picked into the profile once DevTools listens.
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode} at start-up")
            if port_file.is_file() and port_file.read_text().strip():
                return int(port_file.read_text().split()[0])
            time.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port")

    def _page_target(self, port: int) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.05)
        raise TimeoutError("chromium opened no page")

    # -------------------------------------------------------------- protocol
    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events seen meanwhile are logged)."""
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._record(message)
        raise TimeoutError(f"no answer to {method}")

    def _record(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.log.errors.append(f"console.error: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.log.errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.log.errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            self.log.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Network.loadingFailed":
            self.log.errors.append(f"request failed: {params.get('errorText')}")

    def drain(self, seconds: float) -> None:
        """Collect events for ``seconds`` (late console errors, requests)."""
        self.ws.settimeout(0.05)
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                try:
                    self._record(json.loads(self.ws.recv()))
                except websocket.WebSocketTimeoutException:
                    pass
        finally:
            self.ws.settimeout(self.timeout)

    # -------------------------------------------------------------- page helpers
    def open(self, url: str) -> PageLog:
        """Navigate to ``url`` with a fresh log and wait for its load event."""
        self.log = PageLog()
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")
        return self.log

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises are awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            self.drain(0.1)
        raise TimeoutError(f"still false after {timeout or self.timeout} s: {expression}")

    def evaluate_in_window(self, title: str, expression: str) -> Any:
        """The JSON value of ``expression`` in another window of this browser (one the page opened,
        e.g. reveal.js's speaker view) whose title contains ``title``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page" and title in t.get("title", "")]
        if not pages:
            raise LookupError(f"no window titled {title!r} is open")
        ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=self.timeout, suppress_origin=True)
        try:
            ws.send(json.dumps({"id": 1, "method": "Runtime.evaluate",
                                "params": {"expression": expression, "returnByValue": True, "awaitPromise": True}}))
            while True:
                message = json.loads(ws.recv())
                if message.get("id") == 1:
                    return message.get("result", {}).get("result", {}).get("value")
        finally:
            ws.close()

    def set_viewport(self, width: int, height: int) -> None:
        """Make the page's viewport exactly ``width`` x ``height`` CSS pixels (scale 1)."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def print_pdf(self, path: Path, **options: Any) -> Path:
        """Print the page to a PDF at ``path``, with the page size its CSS asks for (``@page``).

        ``options`` go to DevTools' ``Page.printToPDF`` (e.g. ``printBackground=False``).
        """
        params = {"printBackground": True, "preferCSSPageSize": True, "displayHeaderFooter": False,
                  "marginTop": 0, "marginBottom": 0, "marginLeft": 0, "marginRight": 0, **options}
        data = self.send("Page.printToPDF", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
