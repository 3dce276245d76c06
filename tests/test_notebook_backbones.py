"""Every lesson runs with the classic backbones the seeds' recipes were written for, and says what
to do when their weights are missing.

A learner with internet (or a mirror) sets ``BACKBONE = "resnet18"`` first. Each run here executes a
notebook's ``ci`` profile with that backbone (notebook 05 with ``vgg19`` too: ``test_notebook_vgg19.py``)
in **one kernel, as a learner offline would live it**:

1. offline, with an empty torch hub cache: the notebook must stop at the first cell that builds the
   chosen backbone, with the registry's message naming the three ways out (no silent fallback to
   another backbone, and no earlier cell builds it);
2. then the weights appear (as after ``python -m tlcourse stage --weights``): checkpoints this test
   writes, **random weights** under the file names torchvision expects. That cell runs again and the
   notebook goes on to its end.

Random weights make accuracies meaningless, so this checks that every cell executes and that the
recorded results have their structure (every metric the notebook declares a threshold for is
recorded), not the thresholds themselves. Each notebook thus executes once per backbone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
import torch
import torchvision
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from papermill.parameterize import parameterize_notebook

from tlcourse.courseware.course import injected_parameters, notebooks
from tlcourse.courseware.results import metrics_path
from tlcourse.models import backbone_spec

#: 05 first: its near-duplicate standard (EfficientNet-Lite0 features of 894 photos, about 40 s) then lands in
#: the session's shared cache before the ci-profile run of 05 (test_notebooks.py, on the other worker) and
#: VGG-19's run reach it; in the notebooks' order both runs of 05 started together and each computed it.
CASES = sorted(((p, "resnet18") for p in notebooks()), key=lambda case: not case[0].stem.startswith("05"))
#: Smaller settings for these runs, which check that every cell executes with a classic backbone (random
#: weights make accuracies meaningless): one seed, the smallest input sizes. Pinned, so the profile keeps them.
#: (06's fit() calls are time-boxed by BUDGET, so a smaller budget is what makes its run shorter.)
SMOKE = {"01": dict(PROBE_PER_CLASS=20, THROUGHPUT_IMAGES=32, REPEATS=1),
         "02": dict(SEEDS=[0], IMAGE_SIZE=32, RES_SIZES=[32], N_PER_CLASS=4, N_VAL_PER_CLASS=2, N_TEST_PER_CLASS=4,
                    RES_N_PER_CLASS=2),
         "03": dict(RESOLUTION=64, AVP_TRAIN_PER_CLASS=20, AVP_TEST_PER_CLASS=20),
         "04": dict(SIZE=32, SMALL=4, LARGE=8, VAL=4, TEST=8, MAX_EPOCHS_SMALL=2, SCORE_IMAGES=20),
         "05": dict(SEEDS=1, CROP=32, TRAIN_PER_CLASS=30, VAL_FRACTION=0.05, FT_EPOCHS=2, BASELINE_EPOCHS=2),
         "06": dict(CROP=64, BUDGET=20, PHOTO_PER_CLASS=20, SCAN_PER_CLASS=30)}
CELL_TIMEOUT = 900


def _write_random_weights(torch_home: Path, name: str) -> Path:
    """A checkpoint of ``name`` with random weights where torch hub looks for its ImageNet weights."""
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    path = checkpoints / backbone_spec(name).weights_filename
    torch.save(model.state_dict(), path)
    return path


def _execute_offline_then_with_weights(path: Path, executed: Path, backbone: str, torch_home: Path,
                                       knobs: dict[str, object]) -> tuple[int, CellExecutionError]:
    """Run ``path`` cell by cell in one kernel; at the first error, write the weights and run that cell
    again, then go on. Returns the index of the cell that stopped and its error; raises on any other."""
    nb = parameterize_notebook(nbformat.read(path, as_version=4),
                               injected_parameters("ci", {"BACKBONE": backbone, **knobs}))
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    stopped: tuple[int, CellExecutionError] | None = None
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as err:
                    if stopped is not None:
                        raise
                    stopped = (index, err)
                    _write_random_weights(torch_home, backbone)
                    client.execute_cell(cell, index)  # the same cell, now that the weights are there
    finally:
        nbformat.write(nb, executed)  # kept in tmp_path: open it to see where a run failed
    assert stopped is not None, f"{path.name} ran to its end offline without {backbone}'s weights"
    return stopped


def run_with_backbone(path: Path, backbone: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      **knobs: object) -> None:
    """Execute ``path`` in its ci profile with ``backbone``: offline first, then with random weights;
    check the offline stop and the record. (The caller's test takes the ``shared_cache`` fixture.)"""
    torch_home = tmp_path / "torch"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # empty: no weights, and no network here
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("TLCOURSE_PROFILE", raising=False)  # the injected PROFILE decides, as in execute_notebook
    executed = tmp_path / path.name
    index, err = _execute_offline_then_with_weights(path, executed, backbone, torch_home, dict(knobs))

    # 1. offline: the first cell that builds the chosen backbone stops, naming the ways out
    assert err.ename == "WeightsUnavailableError", f"{path.name} stopped with {err.ename}: {err.evalue[:300]}"
    assert "Ways out" in err.evalue and backbone in err.evalue
    nb = nbformat.read(executed, as_version=4)
    # Before it, only the course's own standard features may be built (05's near-duplicate check runs on
    # EfficientNet-Lite0, whose weights ship with the course): never the chosen backbone, never a stand-in.
    before = [c.source for c in nb.cells[:index] if c.cell_type == "code"]
    built = [s for s in before if re.search(r"build_backbone\((?!\"efficientnet_lite0\")", s)]
    assert not built, f"the first cell that builds the chosen backbone is the one that stops: {built[:1]}"

    # 2. with the weights: every cell ran, and the record has its structure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[:1]
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code" and c.source.strip())
    recorded = json.loads(metrics_path(path.stem).read_text())["metrics"]
    declared = nbformat.read(path, as_version=4).metadata["tlcourse"]["checks"]
    missing = sorted(set(declared) - set(recorded))
    assert not missing, f"{path.name} with {backbone} did not record {missing}"
    assert recorded.get("backbone") == backbone, "the notebook records which backbone produced its results"


@pytest.mark.notebook
@pytest.mark.parametrize("path, backbone", CASES, ids=[f"{p.stem}-{b}" for p, b in CASES])
def test_notebook_stops_offline_then_runs_to_the_end_with_a_classic_backbone(
        path: Path, backbone: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache: Path):
    run_with_backbone(path, backbone, tmp_path, monkeypatch, **SMOKE.get(path.stem[:2], {}))
