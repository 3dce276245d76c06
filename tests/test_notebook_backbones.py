"""Every lesson runs with the classic backbones the seeds' recipes were written for.

A learner with internet (or a mirror) sets ``BACKBONE = "resnet18"`` first. These runs execute
each notebook's ``ci`` profile with that backbone (and notebook 05 with ``vgg19`` too) against
a temporary torch hub cache holding checkpoints this test writes: **random weights** under the
file names torchvision expects. Random weights make accuracies meaningless, so this checks that
every cell executes and that the recorded results have their structure (every metric the
notebook declares a threshold for is recorded), not the thresholds themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import torch
import torchvision

from tlcourse.course import execute_notebook, notebooks
from tlcourse.models import backbone_spec
from tlcourse.results import metrics_path

CASES = [(p, "resnet18") for p in notebooks()] + [(p, "vgg19") for p in notebooks() if p.stem.startswith("05")]


def _hub_with_random_weights(root: Path, names: list[str]) -> Path:
    checkpoints = root / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for name in names:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None)
        torch.save(model.state_dict(), checkpoints / backbone_spec(name).weights_filename)
    return root


@pytest.mark.notebook
@pytest.mark.parametrize("path, backbone", CASES, ids=[f"{p.stem}-{b}" for p, b in CASES])
def test_notebook_runs_to_the_end_with_a_classic_backbone(path: Path, backbone: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(_hub_with_random_weights(tmp_path / "torch", [backbone])))
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "build"))
    executed = tmp_path / path.name
    execute_notebook(path, executed, profile="ci", progress=False, cell_timeout=900,
                     parameters={"BACKBONE": backbone})
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[:1]
    recorded = json.loads(metrics_path(path.stem).read_text())["metrics"]
    declared = nbformat.read(path, as_version=4).metadata["tlcourse"]["checks"]
    missing = sorted(set(declared) - set(recorded))
    assert not missing, f"{path.name} with {backbone} did not record {missing}"
    assert recorded.get("backbone") == backbone, "the notebook records which backbone produced its results"


@pytest.mark.notebook
@pytest.mark.parametrize("path", notebooks(), ids=[p.stem for p in notebooks()])
def test_offline_without_weights_the_first_model_cell_names_the_ways_out(path: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    """Every notebook makes the same choice offline: stop at its first model cell with the
    registry's message (no silent fallback to another backbone)."""
    import papermill

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
