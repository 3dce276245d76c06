"""environment.yml and its CPU variant environment-cpu.yml (conda) and pyproject.toml (pip) must
describe the same environment, the CPU variant with PyTorch's CPU builds, and the environment the
tests run in must satisfy it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names that differ from the PyPI names
CONDA_TO_PYPI = {"pytorch": "torch", "pyyaml": "pyyaml"}
CONDA_ONLY = {"python", "pip"}
ENVIRONMENTS = ["environment.yml", "environment-cpu.yml"]
TORCH_PACKAGES = {"pytorch", "torchvision"}


def pip_requirements() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    return {canonicalize_name(r.name): r.specifier for r in reqs}


def conda_dependencies(filename: str) -> list[tuple[str, str, str]]:
    """(conda name, version spec, build string) of each conda dependency: ``name==1.0=cpu_*``."""
    env = yaml.safe_load((ROOT / filename).read_text())
    out = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            continue
        name, spec = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", dep).groups()  # type: ignore[union-attr]
        # a build string follows the version after a single '=' (not part of '==', '>=' or '<=')
        version, build = spec.replace(" ", ""), ""
        if pinned := re.fullmatch(r"(.*[^=<>!~])=([^=]+)", version):
            version, build = pinned.groups()
        out.append((name, version, build))
    return out


def conda_requirements(filename: str = "environment.yml") -> dict[str, SpecifierSet]:
    env = yaml.safe_load((ROOT / filename).read_text())
    out: dict[str, SpecifierSet] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):  # the pip: subsection uses PyPI syntax
            for line in dep["pip"]:
                if not line.startswith("-e"):
                    r = Requirement(line)
                    out[canonicalize_name(r.name)] = r.specifier
    for name, version, _build in conda_dependencies(filename):
        if name in CONDA_ONLY:
            continue
        out[canonicalize_name(CONDA_TO_PYPI.get(name, name))] = SpecifierSet(version)
    return out


@pytest.mark.parametrize("filename", ENVIRONMENTS)
def test_conda_and_pip_name_the_same_packages(filename: str) -> None:
    pip, conda = pip_requirements(), conda_requirements(filename)
    assert sorted(set(pip) - set(conda)) == [], "in pyproject.toml but not environment.yml"
    assert sorted(set(conda) - set(pip)) == [], "in environment.yml but not pyproject.toml"


@pytest.mark.parametrize("filename", ENVIRONMENTS)
def test_conda_and_pip_pins_match(filename: str) -> None:
    pip, conda = pip_requirements(), conda_requirements(filename)
    mismatched = {name: (str(pip[name]), str(conda[name])) for name in pip if pip[name] != conda.get(name)}
    assert mismatched == {}


def test_the_cpu_environment_takes_pytorchs_cpu_builds_and_nothing_of_cuda() -> None:
    cpu = conda_dependencies("environment-cpu.yml")
    builds = {name: build for name, _, build in cpu if name in TORCH_PACKAGES}
    assert builds == {name: "cpu_*" for name in TORCH_PACKAGES}
    assert [n for n, _, _ in cpu if re.match(r"(cuda|nvidia|cudnn|nccl|cupy)", n)] == []
    # the default file leaves the build to conda (CUDA where a GPU is), and the two differ only there
    default = conda_dependencies("environment.yml")
    assert [d for d in default if d[2]] == []
    assert [d[:2] for d in default] == [d[:2] for d in cpu]


@pytest.mark.parametrize("name", sorted(pip_requirements()))
def test_installed_versions_satisfy_the_pins(name: str) -> None:
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{name} is required by pyproject.toml but not installed: run `make test` to set up .venv")
    spec = pip_requirements()[name]
    # local version labels such as +cu130 do not change the release being pinned
    assert spec.contains(version.split("+")[0], prereleases=True), f"{name} {version} does not satisfy {spec}"


@pytest.mark.parametrize("filename", ENVIRONMENTS)
def test_conda_asks_for_the_python_pyproject_requires(filename: str) -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    python = {name: version for name, version, _ in conda_dependencies(filename)}["python"]
    assert SpecifierSet(python) == SpecifierSet(requires)
