"""Offline without the weights, every notebook makes the same choice: it stops at its first model
cell with the registry's message naming the three ways out (no silent fallback to another backbone).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest

from tlcourse.courseware.course import execute_notebook, notebooks


@pytest.mark.notebook
@pytest.mark.parametrize("path", notebooks(), ids=[p.stem for p in notebooks()])
def test_offline_without_weights_the_first_model_cell_names_the_ways_out(path: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
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
    assert not any("build_backbone" in c.source for c in code[:failed]), \
        "the first cell that builds a model is the one that stops"
