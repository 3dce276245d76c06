"""Which torch build should ``pip install -e '.[test]'`` fetch? Prints the extra pip arguments.

    .venv/bin/python -m pip install -e '.[test]' $(python3 scripts/torch_index.py)

PyPI's Linux torch wheel is a CUDA build that pulls in gigabytes of ``nvidia-*`` libraries; a
learner without an NVIDIA GPU needs none of them. So, without a GPU on Linux or Windows, this
prints ``--extra-index-url=https://download.pytorch.org/whl/cpu``: pip then sees ``2.14.1+cpu``
beside PyPI's ``2.14.1``, prefers the higher local version, and the CPU build installs. pip's own
configuration (an index, ``find-links``, a local wheel folder) stays in force, because the index is
added, not substituted. When that index cannot be reached (offline, a classroom without internet),
nothing is added and pip installs from what it is configured to use: no hang, no failure.

``TLCOURSE_TORCH`` overrides the choice: ``cpu``, ``cuda`` (PyPI's default build), ``local`` (only
pip's configured sources, no probe) or ``auto`` (the default). ``TLCOURSE_TORCH_CPU_INDEX`` names
another CPU index (a mirror). Standard library only: it runs before torch or the course exist.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CHOICES = ("auto", "cpu", "cuda", "local")
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Choice:
    """The build chosen, the pip arguments that select it, and why (one line for the learner)."""

    build: str  # "cpu", "cuda", "default" (PyPI's own for this platform) or "local"
    reason: str
    pip_args: list[str] = field(default_factory=list)


def nvidia_gpu_present(
    which: Callable[[str], str | None] = shutil.which, driver_dir: Path = Path("/proc/driver/nvidia")
) -> bool:
    """True when an NVIDIA driver is loaded (Linux) or ``nvidia-smi`` lists a GPU (any platform)."""
    if (driver_dir / "gpus").is_dir() and any((driver_dir / "gpus").iterdir()):
        return True
    smi = which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def index_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when ``url``'s torch page answers within ``timeout`` seconds (proxies from the environment apply)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + "/torch/", method="HEAD"),
                                    timeout=timeout) as response:
            return 200 <= response.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def choose(
    system: str,
    gpu: bool,
    override: str | None,
    reachable: Callable[[str], bool],
    cpu_index: str = CPU_INDEX,
) -> Choice:
    """Decide the torch build from the platform (``platform.system()``), a GPU, the override and the network.

    ``reachable`` is only called when the CPU index would be used, so ``local`` never touches the network.
    """
    wanted = (override or "auto").strip().lower()
    if wanted not in CHOICES:
        raise ValueError(f"TLCOURSE_TORCH={override!r}: use one of {', '.join(CHOICES)}")
    if wanted == "local":
        return Choice("local", "TLCOURSE_TORCH=local: pip's configured sources only")
    if system == "Darwin":
        # PyPI's macOS wheels are the CPU/MPS build; there is no CUDA build to avoid or to ask for.
        return Choice("default", "macOS: PyPI's torch is the CPU/MPS build")
    if wanted == "cuda" or (wanted == "auto" and gpu):
        why = "TLCOURSE_TORCH=cuda" if wanted == "cuda" else "an NVIDIA GPU is present"
        return Choice("cuda", f"{why}: PyPI's default torch build")
    why = "TLCOURSE_TORCH=cpu" if wanted == "cpu" else "no NVIDIA GPU found"
    if not reachable(cpu_index):
        return Choice("local", f"{why}, but {cpu_index} cannot be reached: pip's configured sources only")
    return Choice("cpu", f"{why}: torch's CPU build from {cpu_index}", [f"--extra-index-url={cpu_index}"])


def choose_here(env: Mapping[str, str] = os.environ) -> Choice:
    """:func:`choose` for this machine and environment."""
    return choose(platform.system(), nvidia_gpu_present(), env.get("TLCOURSE_TORCH"), index_reachable,
                  env.get("TLCOURSE_TORCH_CPU_INDEX") or CPU_INDEX)


def main() -> int:
    try:
        choice = choose_here()
    except ValueError as error:
        print(f"[setup] {error}", file=sys.stderr)
        return 2
    print(f"[setup] torch: {choice.reason} (TLCOURSE_TORCH=cpu|cuda|local changes this)", file=sys.stderr)
    print("\n".join(choice.pip_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
