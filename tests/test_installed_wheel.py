"""The package works installed as a wheel, away from the checkout: its committed results ship as
package data, and nothing reads the repository's layout.

The wheel is built and installed into a fresh virtual environment in a temporary folder; the
course's dependencies come from the test environment (a ``.pth`` file points at its
``site-packages``), so the test downloads nothing and the installed ``tlcourse`` is the wheel's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(ROOT)], check=True, timeout=300)
    wheel = next((tmp / "dist").glob("tlcourse-*.whl"))
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies, not tlcourse: the test environment's editable install is a .pth *file* there,
    # which a path line does not run, so the only tlcourse the new environment sees is the wheel's
    (site / "course-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLCOURSE_", "PYTHON"))}
    work = tmp / "elsewhere"
    work.mkdir()
    return python, {**env, "HOME": str(tmp)}, work


def run(installed, code: str) -> str:
    python, env, work = installed
    done = subprocess.run([str(python), "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=work, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_wheel_is_the_package_that_runs(installed):
    where = run(installed, "import tlcourse; print(tlcourse.__file__)")
    assert str(ROOT) not in where and "site-packages" in where


def test_the_advisor_quotes_the_committed_reference_run_from_the_wheel(installed):
    out = run(installed, """
        from tlcourse.experiments import advisor, findings
        evidence = advisor.reference_evidence()
        print(advisor.recommend(1000, 0.9, evidence=evidence))
        print(len(findings.all_findings()), advisor.reference_path())
    """)
    assert "finding matrix.large_similar" in out and "site-packages" in out.splitlines()[-1]


def test_fit_help_runs_from_outside_the_checkout(installed):
    python, env, work = installed
    done = subprocess.run([str(python), "-m", "tlcourse", "fit", "--help"], capture_output=True, text=True, env=env,
                          cwd=work, timeout=300)
    assert done.returncode == 0 and "--device" in done.stdout and "FOLDER" in done.stdout


def test_build_and_data_folders_are_the_learners_not_site_packages(installed):
    python, env, work = installed
    out = run(installed, "from tlcourse import paths; print(paths.build_dir()); print(paths.data_dir())")
    assert out.split() == [str(work.resolve() / "build"), str(work.resolve() / "data")]
