"""Every lesson runs with the classic backbones the seeds' recipes were written for.

A learner with internet (or a mirror) sets ``BACKBONE = "resnet18"`` first. These runs execute
each notebook's ``ci`` profile with that backbone (notebook 05 with ``vgg19`` too:
``test_notebook_vgg19.py``; offline without weights: ``test_notebook_offline.py``) against
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

from tlcourse.courseware.course import execute_notebook, notebooks
from tlcourse.courseware.results import metrics_path
from tlcourse.models import backbone_spec

CASES = [(p, "resnet18") for p in notebooks()]
#: Smaller settings for these runs, which check that every cell executes with a classic backbone (random
#: weights make accuracies meaningless): one seed, the smallest input sizes. Pinned, so the profile keeps them.
#: (06's fit() calls are time-boxed by BUDGET, so a smaller budget is what makes its run shorter.)
SMOKE = {"02": dict(SEEDS=[0], IMAGE_SIZE=32, RES_SIZES=[32]), "03": dict(RESOLUTION=64), "06": dict(CROP=64, BUDGET=20),
         "05": dict(SEEDS=1, CROP=32, TRAIN_PER_CLASS=30, VAL_FRACTION=0.05, FT_EPOCHS=2, BASELINE_EPOCHS=2)}


def _hub_with_random_weights(root: Path, names: list[str]) -> Path:
    checkpoints = root / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for name in names:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None)
        torch.save(model.state_dict(), checkpoints / backbone_spec(name).weights_filename)
    return root


def run_with_backbone(path: Path, backbone: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      **knobs: object) -> None:  # the caller's test takes the ``shared_cache`` fixture
    """Execute ``path`` in its ci profile with ``backbone`` (random weights) and check its record."""
    monkeypatch.setenv("TORCH_HOME", str(_hub_with_random_weights(tmp_path / "torch", [backbone])))
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "build"))
    executed = tmp_path / path.name
    execute_notebook(path, executed, profile="ci", progress=False, cell_timeout=900,
                     parameters={"BACKBONE": backbone, **knobs})
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[:1]
    recorded = json.loads(metrics_path(path.stem).read_text())["metrics"]
    declared = nbformat.read(path, as_version=4).metadata["tlcourse"]["checks"]
    missing = sorted(set(declared) - set(recorded))
    assert not missing, f"{path.name} with {backbone} did not record {missing}"
    assert recorded.get("backbone") == backbone, "the notebook records which backbone produced its results"


@pytest.mark.notebook
@pytest.mark.parametrize("path, backbone", CASES, ids=[f"{p.stem}-{b}" for p, b in CASES])
def test_notebook_runs_to_the_end_with_a_classic_backbone(path: Path, backbone: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, shared_cache: Path):
    run_with_backbone(path, backbone, tmp_path, monkeypatch, **SMOKE.get(path.stem[:2], {}))
