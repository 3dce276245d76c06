"""The torch build that ``make setup`` installs (scripts/torch_index.py).

Unit tests of the choice (platform, GPU, override, network), then pip itself resolving against
fake indexes served on 127.0.0.1: with the script's arguments a CPU learner gets ``+cpu`` while
pip's configured sources stay in force, and with no network the script adds nothing, at once.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "torch_index.py"


def _load():
    spec = importlib.util.spec_from_file_location("torch_index", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["torch_index"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


ti = _load()

def never(url: str) -> bool:
    raise AssertionError("the network must not be probed here")


@pytest.mark.parametrize("system", ["Linux", "Windows"])
def test_no_gpu_on_linux_or_windows_adds_the_cpu_index(system: str) -> None:
    choice = ti.choose(system, gpu=False, override=None, reachable=lambda url: True)
    assert choice.build == "cpu"
    assert choice.pip_args == ["--extra-index-url=https://download.pytorch.org/whl/cpu"]


def test_a_gpu_keeps_pypis_cuda_build_without_probing() -> None:
    choice = ti.choose("Linux", gpu=True, override=None, reachable=never)
    assert (choice.build, choice.pip_args) == ("cuda", [])


def test_macos_has_no_cuda_build_so_nothing_is_added_whatever_is_asked() -> None:
    for override in (None, "auto", "cpu", "cuda"):
        choice = ti.choose("Darwin", gpu=False, override=override, reachable=never)
        assert (choice.build, choice.pip_args) == ("default", [])


def test_overrides_win_over_the_detection() -> None:
    assert ti.choose("Linux", gpu=True, override="cpu", reachable=lambda url: True).build == "cpu"
    assert ti.choose("Linux", gpu=False, override="CUDA", reachable=never).pip_args == []
    local = ti.choose("Linux", gpu=False, override="local", reachable=never)
    assert (local.build, local.pip_args) == ("local", [])
    with pytest.raises(ValueError, match="cpu, cuda, local"):
        ti.choose("Linux", gpu=False, override="gpu", reachable=never)


def test_an_unreachable_cpu_index_falls_back_to_pips_configured_sources() -> None:
    choice = ti.choose("Linux", gpu=False, override=None, reachable=lambda url: False)
    assert (choice.build, choice.pip_args) == ("local", [])
    assert "cannot be reached" in choice.reason


def test_a_mirror_of_the_cpu_index_can_be_named() -> None:
    seen: list[str] = []
    choice = ti.choose("Linux", False, None, lambda url: seen.append(url) or True, cpu_index="http://m/cpu")
    assert seen == ["http://m/cpu"] and choice.pip_args == ["--extra-index-url=http://m/cpu"]


def test_gpu_detection_reads_the_driver_and_nvidia_smi(tmp_path: Path) -> None:
    no_smi = functools.partial(lambda name: None)
    assert not ti.nvidia_gpu_present(which=no_smi, driver_dir=tmp_path / "absent")
    (tmp_path / "gpus" / "0000:01:00.0").mkdir(parents=True)
    assert ti.nvidia_gpu_present(which=no_smi, driver_dir=tmp_path)
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-1)'\n")
    smi.chmod(0o755)
    assert ti.nvidia_gpu_present(which=lambda name: str(smi), driver_dir=tmp_path / "absent")
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2; exit 9\n")
    assert not ti.nvidia_gpu_present(which=lambda name: str(smi), driver_dir=tmp_path / "absent")


# ------------------------------------------------------------------ pip against fake indexes
def _wheel(folder: Path, name: str, version: str) -> None:
    """A minimal valid pure-Python wheel: enough for pip to resolve and read its metadata."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)


def _simple_index(root: Path, project: str) -> None:
    """A PEP 503 page for ``project`` linking (relatively) every wheel of it in ``root/files``."""
    page = root / "simple" / project
    page.mkdir(parents=True, exist_ok=True)
    wheels = sorted((root / "files").glob(f"{project}-*.whl"))
    links = "".join(f'<a href="../../files/{w.name}">{w.name}</a>\n' for w in wheels)
    (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")


@pytest.fixture
def cpu_index(tmp_path: Path) -> Iterator[str]:
    """PyTorch's CPU index in miniature, served over HTTP on 127.0.0.1."""
    _wheel(tmp_path / "cpu" / "files", "torch", "2.14.1+cpu")
    _simple_index(tmp_path / "cpu", "torch")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "cpu"))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def configured_pip(tmp_path: Path) -> dict[str, str]:
    """An environment where pip is configured like this machine: a local index in the config file
    (here holding PyPI's torch 2.14.1 and a second package only it has), a constraint capping torch,
    and no reachable default index."""
    _wheel(tmp_path / "local" / "files", "torch", "2.14.1")
    _wheel(tmp_path / "local" / "files", "onlylocal", "1.0")
    for project in ("torch", "onlylocal"):
        _simple_index(tmp_path / "local", project)
    (tmp_path / "constraints.txt").write_text("torch<=2.14.1\n")
    (tmp_path / "pip.conf").write_text(
        "[global]\n"
        f"index-url = {(tmp_path / 'empty').as_uri()}\n"
        f"extra-index-url = {(tmp_path / 'local' / 'simple').as_uri()}\n"
        f"constraint = {tmp_path / 'constraints.txt'}\n"
    )
    (tmp_path / "empty").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=str(tmp_path / "pip.conf"), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1")
    return env


def _resolve(env: dict[str, str], tmp_path: Path, extra: list[str]) -> dict[str, str]:
    """What ``pip install torch==2.14.1 onlylocal`` would install: {name: version}."""
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
         "--report", str(report), "torch==2.14.1", "onlylocal", *extra],
        env=env, check=True, timeout=120,
    )
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def test_pip_takes_the_cpu_build_and_keeps_its_configured_index(tmp_path, cpu_index, configured_pip) -> None:
    assert ti.index_reachable(cpu_index)
    choice = ti.choose("Linux", gpu=False, override=None, reachable=ti.index_reachable, cpu_index=cpu_index)
    assert choice.build == "cpu"
    # onlylocal comes from the config file's index: adding the CPU index did not replace it.
    assert _resolve(configured_pip, tmp_path, choice.pip_args) == {"torch": "2.14.1+cpu", "onlylocal": "1.0"}
    # Without the argument the same pip installs the CUDA build's version: the test can fail.
    assert _resolve(configured_pip, tmp_path, [])["torch"] == "2.14.1"


def test_offline_the_script_adds_nothing_at_once_and_pip_installs_locally(tmp_path, configured_pip) -> None:
    unshare = shutil.which("unshare")
    command = [sys.executable, str(SCRIPT)]
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        command = [unshare, "-n", *command]  # a network namespace with no interface at all
    else:
        configured_pip = {**configured_pip, "TLCOURSE_TORCH_CPU_INDEX": "http://127.0.0.1:9/simple"}  # refused
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=configured_pip, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [] and "cannot be reached" in done.stderr
    assert elapsed < ti.PROBE_TIMEOUT_S + 2, f"the offline probe took {elapsed:.1f} s"
    assert _resolve(configured_pip, tmp_path, done.stdout.split()) == {"torch": "2.14.1", "onlylocal": "1.0"}


def test_make_setup_installs_with_the_readmes_lines_which_pass_the_scripts_arguments_to_pip() -> None:
    recipe = (ROOT / "Makefile").read_text().split("\n$(STAMP): ", 1)[1].split("\n\n", 1)[0]
    commands = [line.strip() for line in recipe.replace("\\\n", " ").splitlines()[1:] if not line.strip().startswith("@")]
    assert commands[0] == "$(PYTHON) scripts/readme_setup.py --python $(PYTHON)", recipe
    assert not any("pip install" in line for line in commands), "one install: the README's"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Without make (Windows, macOS)\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    install = [line for line in section.splitlines() if "pip install" in line]
    assert install == [".venv/bin/python -m pip install -e '.[test]' $(python3 scripts/torch_index.py)"], install
