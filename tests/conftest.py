"""Fixtures for the dataset tests (test_data, test_download, test_cli): isolated data and
mirror folders, tiny generated datasets, a patched registry, and a local HTTP server.
Nothing here touches the network or the project's real data/ folder.
"""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import os
import socket
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


@dataclass
class DatasetDirs:
    """The data dir and mirror dir a test runs against (both empty at the start)."""

    data: Path
    mirror: Path


@pytest.fixture
def dataset_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DatasetDirs:
    """Point ``TLCOURSE_DATA_DIR`` and ``TLCOURSE_MIRROR`` at two empty folders in tmp_path."""
    dirs = DatasetDirs(data=tmp_path / "data", mirror=tmp_path / "mirror")
    dirs.data.mkdir()
    dirs.mirror.mkdir()
    monkeypatch.setenv("TLCOURSE_DATA_DIR", str(dirs.data))
    monkeypatch.setenv("TLCOURSE_MIRROR", str(dirs.mirror))
    return dirs


class TinyData:
    """Makers of small, distinct images, zips and npz files in the course's layouts."""

    # split -> class -> images in the Alien-vs-Predator stand-in, plus one cross-split copy
    # (validation/predator/2.jpg is train/predator/1.jpg), like the real dataset's leaks.
    avp_counts = {"train": {"alien": 3, "predator": 3}, "validation": {"alien": 2, "predator": 3}}

    def __init__(self) -> None:
        self._shade = 0

    def image_bytes(self, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
        """A tiny 8x8 one-colour image, a different colour on every call."""
        self._shade = (self._shade + 17) % 256
        shade = self._shade
        colour: Any = shade if mode in ("L", "P") else (shade, 255 - shade, 99, 128)[: len(mode)]
        buffer = io.BytesIO()
        Image.new(mode, (8, 8), colour).save(buffer, format=fmt)
        return buffer.getvalue()

    def avp_zip(self, path: Path, prefix: str = "alien-vs-predator/") -> Path:
        """A zip in the mirror's AvP layout (``prefix`` changes the folder above the splits)."""
        with zipfile.ZipFile(path, "w") as zf:
            for split in ("train", "validation"):
                for cls in ("alien", "predator"):
                    for i in range(3 if split == "train" else 2):
                        zf.writestr(f"{prefix}{split}/{cls}/{i}.jpg", self.image_bytes())
            zf.writestr(f"{prefix}validation/predator/2.jpg", zf.read(f"{prefix}train/predator/1.jpg"))
        return path

    def npz(self, path: Path, labels_2d: bool = False, n: int = 6) -> Path:
        """A MedMNIST-like npz: train/val/test of n 28x28 grey images, labels 0,1,0,1..."""
        rng = np.random.default_rng(0)
        arrays = {}
        for split in ("train", "val", "test"):
            labels = np.arange(n, dtype=np.uint8) % 2
            arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
            arrays[f"{split}_labels"] = labels.reshape(-1, 1) if labels_2d else labels
        np.savez(path, **arrays)
        return path


@pytest.fixture
def tiny_data() -> TinyData:
    """Makers of tiny test datasets (see :class:`TinyData`)."""
    return TinyData()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once (no network)."""
    return f"http://127.0.0.1:{_closed_port()}/dataset.zip"


@pytest.fixture
def register_spec(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Replace fields of a ``tlcourse.data.DATASETS`` entry for one test: ``register_spec(name, **fields)``."""
    from tlcourse import data

    def register(name: str, **fields: Any) -> Any:
        spec = dataclasses.replace(data.DATASETS[name], **fields)
        monkeypatch.setitem(data.DATASETS, name, spec)
        return spec

    return register


@dataclass
class Route:
    """What the local server answers for one path: a body, optionally with a lying length."""

    body: bytes
    claimed_length: int | None = None  # a Content-Length larger than the body: a cut transfer


class _RouteHandler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(route.claimed_length or len(route.body)))
        self.end_headers()
        self.wfile.write(route.body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@dataclass
class LocalServer:
    """A running HTTP server on 127.0.0.1; ``serve(path, body)`` adds a file, other paths are 404."""

    port: int
    routes: dict[str, Route]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, claimed_length: int | None = None) -> str:
        """Answer GET ``path`` with ``body`` (and a Content-Length of ``claimed_length``); returns its URL."""
        self.routes[path] = Route(body, claimed_length)
        return self.url(path)


@pytest.fixture
def local_http_server() -> Iterator[LocalServer]:
    """http.server on 127.0.0.1 (port 0, in a thread) serving the routes a test adds."""
    routes: dict[str, Route] = {}
    handler = type("Handler", (_RouteHandler,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval, so shutting the server down does not add half a second per test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield LocalServer(port=server.server_address[1], routes=routes)
    finally:
        server.shutdown()
        server.server_close()


#: The longest test files, longest first (seconds in a quiet AMD EPYC 2-core run: the six notebooks in
#: the ci profile about 570, their offline-then-ResNet-18 runs about 400, VGG-19's run of notebook 05
#: about 180; the README's commands about 25 after ``make setup`` ran its install, 200 without). With ``--dist loadfile --no-loadscope-reorder``
#: (the Makefile's), pytest-xdist hands files to workers in collection order; starting the longest first
#: keeps one worker from beginning a long file while the other has nothing left to do.
LONGEST_FIRST = ("test_notebooks.py", "test_notebook_backbones.py", "test_notebook_vgg19.py",
                 "test_readme_commands.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the longest files first; the order inside each file stays as written."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort


def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every xdist worker of this pytest session shares (popen-gwN's parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def course_decks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every course deck, built from the committed notebooks once per pytest session (its xdist workers
    included: test_slides.py and test_slide_fit.py read the same decks). The rows of ``build_slides``."""
    from tlcourse._io import locked
    from tlcourse.courseware import slides

    folder = session_dir(tmp_path_factory) / "course-decks"
    done = folder / "rows.json"
    with locked(folder):  # the other worker waits here while the first one builds
        if not done.exists():
            rows = slides.build_slides(out=folder)
            done.write_text(json.dumps(rows))
    return json.loads(done.read_text())


@pytest.fixture
def shared_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One ``TLCOURSE_CACHE_DIR`` for every notebook run of this pytest session, its xdist workers
    included. Each run keeps its own build folder (metrics, checkpoints); the feature, activation
    and ONNX caches are keyed by everything they depend on, so a frozen pass that several runs
    make (05's near-duplicate standard on EfficientNet-Lite0) is computed once per session.
    A new session starts empty: nothing from an earlier run can stand in for this one's."""
    cache = session_dir(tmp_path_factory) / "shared-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("TLCOURSE_CACHE_DIR", str(cache))
    return cache
