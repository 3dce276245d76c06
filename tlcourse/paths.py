"""Where the course keeps things: the project root, ``data/``, ``build/`` and the mirror.

:func:`shown` is how every output names a path: relative to the project, the mirror or the home
folder, never as the absolute path of the machine that ran it.

Every location can be moved with an environment variable, so tests and classrooms can point
the package somewhere else without editing code:

``TLCOURSE_ROOT``        the project root (default: the folder above this package)
``TLCOURSE_DATA_DIR``    the first place datasets are looked for (default: ``<root>/data``)
``TLCOURSE_BUILD_DIR``   where executed notebooks, metrics and renders go (default: ``<root>/build``)
``TLCOURSE_CACHE_DIR``   where the feature, activation and ONNX caches go (default: the build folder);
                         their files are keyed by everything they depend on, so runs can share them
``TLCOURSE_MIRROR``      a folder that mirrors the course's dataset files (an instructor's USB
                         stick, a classroom share, ``../shared/datasets`` in CI); unset by default
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MIRROR_ENV", "build_dir", "cache_dir", "data_dir", "mirror_dir", "project_root", "shown"]

MIRROR_ENV = "TLCOURSE_MIRROR"


def project_root() -> Path:
    """The course checkout: ``$TLCOURSE_ROOT``, or the folder that holds the ``tlcourse`` package
    when that is a checkout (it has ``pyproject.toml``). An installed package has no checkout
    around it: then the current folder is the root, so ``data/`` and ``build/`` land where the
    learner works, never inside ``site-packages``."""
    env = os.environ.get("TLCOURSE_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd().resolve()


def data_dir() -> Path:
    """The project's own dataset folder, searched first (``$TLCOURSE_DATA_DIR`` or ``<root>/data``)."""
    env = os.environ.get("TLCOURSE_DATA_DIR")
    return Path(env).expanduser().resolve() if env else project_root() / "data"


def build_dir() -> Path:
    """Where generated files go (``$TLCOURSE_BUILD_DIR`` or ``<root>/build``)."""
    env = os.environ.get("TLCOURSE_BUILD_DIR")
    return Path(env).expanduser().resolve() if env else project_root() / "build"


def cache_dir() -> Path:
    """Where the caches go (``$TLCOURSE_CACHE_DIR`` or :func:`build_dir`): ``features/``,
    ``activations/`` and ``onnx/``. Entries are keyed by their content, so one folder can serve
    several runs that each keep their own build folder (the notebook tests do)."""
    env = os.environ.get("TLCOURSE_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else build_dir()


def mirror_dir() -> Path | None:
    """The mirror folder named by ``$TLCOURSE_MIRROR``, or ``None`` when the variable is unset."""
    env = os.environ.get(MIRROR_ENV)
    return Path(env).expanduser().resolve() if env else None


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` as an output should show it: ``$TLCOURSE_MIRROR/x`` inside the mirror, ``x``
    relative to the project root or the current folder, ``~/x`` under the home folder, else as is.

    Notebooks, logs and reports are read on other machines (slides, the course site, a classmate's
    copy): the absolute path of the machine that ran them means nothing there.
    """
    p = Path(path).expanduser()
    p = p.resolve() if p.is_absolute() else p
    if not p.is_absolute():
        return str(p)
    mirror = mirror_dir()
    for base, prefix in ((mirror, "$" + MIRROR_ENV), (project_root(), ""), (Path.cwd(), ""), (Path.home(), "~")):
        if base is None:
            continue
        try:
            rel = p.relative_to(base.resolve())
        except ValueError:
            continue
        text = rel.as_posix()
        return f"{prefix}/{text}" if prefix else (text or ".")
    return str(p)
