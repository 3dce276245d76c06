"""Offline without the weights, every notebook makes the same choice: it stops at the first cell that
builds the chosen backbone, with the registry's message naming the three ways out (no silent fallback
to another backbone).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import papermill
import pytest

from tlcourse.courseware.course import execute_notebook, notebooks


@pytest.mark.notebook
@pytest.mark.parametrize("path", notebooks(), ids=[p.stem for p in notebooks()])
def test_offline_without_weights_the_first_model_cell_names_the_ways_out(path: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        shared_cache: Path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "build"))
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        execute_notebook(path, tmp_path / path.name, profile="ci", progress=False, cell_timeout=900,
                         parameters={"BACKBONE": "resnet18"})
    assert failure.value.ename == "WeightsUnavailableError"
    assert "Ways out" in failure.value.evalue and "resnet18" in failure.value.evalue
    executed = nbformat.read(tmp_path / path.name, as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    failed = next(i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs))
    # Before it, only the course's own standard features may be built (05's near-duplicate check runs on
    # EfficientNet-Lite0, whose weights ship with the course): never the chosen backbone, never a stand-in.
    built = [c.source for c in code[:failed] if re.search(r"build_backbone\((?!\"efficientnet_lite0\")", c.source)]
    assert not built, f"the first cell that builds the chosen backbone is the one that stops: {built[:1]}"
