"""environment.yml (conda) and pyproject.toml (pip) must describe the same environment,
and the environment the tests run in must satisfy it."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names that differ from the PyPI names
CONDA_TO_PYPI = {"pytorch": "torch", "pyyaml": "pyyaml"}
CONDA_ONLY = {"python", "pip"}


def pip_requirements() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    return {canonicalize_name(r.name): r.specifier for r in reqs}


def conda_requirements() -> dict[str, SpecifierSet]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out: dict[str, SpecifierSet] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):  # the pip: subsection uses PyPI syntax
            for line in dep["pip"]:
                if not line.startswith("-e"):
                    r = Requirement(line)
                    out[canonicalize_name(r.name)] = r.specifier
            continue
        name, spec = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", dep).groups()  # type: ignore[union-attr]
        if name in CONDA_ONLY:
            continue
        out[canonicalize_name(CONDA_TO_PYPI.get(name, name))] = SpecifierSet(spec.replace(" ", ""))
    return out


def test_conda_and_pip_name_the_same_packages() -> None:
    pip, conda = pip_requirements(), conda_requirements()
    assert sorted(set(pip) - set(conda)) == [], "in pyproject.toml but not environment.yml"
    assert sorted(set(conda) - set(pip)) == [], "in environment.yml but not pyproject.toml"


def test_conda_and_pip_pins_match() -> None:
    pip, conda = pip_requirements(), conda_requirements()
    mismatched = {name: (str(pip[name]), str(conda[name])) for name in pip if pip[name] != conda.get(name)}
    assert mismatched == {}


@pytest.mark.parametrize("name", sorted(pip_requirements()))
def test_installed_versions_satisfy_the_pins(name: str) -> None:
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{name} is required by pyproject.toml but not installed: run `make test` to set up .venv")
    spec = pip_requirements()[name]
    # local version labels such as +cu130 do not change the release being pinned
    assert spec.contains(version.split("+")[0], prereleases=True), f"{name} {version} does not satisfy {spec}"
