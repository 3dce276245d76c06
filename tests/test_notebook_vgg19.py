"""Notebook 05 runs the VGG-19 recipe as written (``model.classifier[6]``) when VGG-19 is loaded.

As in ``test_notebook_backbones.py``: offline first (the first cell that builds VGG-19 stops with the
ways out), then random weights under torchvision's file name, in the same kernel. VGG-19 costs
about 13 times ResNet-18's arithmetic per image, so this run uses the same smoke setting of the ci
profile as the ResNet-18 run of 05 (``SMOKE["05"]``: one seed, 32 px, 30 training images per class, 5%
of the pool for validation, 2 epochs; VGG-19's last feature map is then 1x1 px): it checks that every cell executes and the record has its structure, not accuracy. A file of its own, so pytest-xdist runs it beside the
other notebook runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_notebook_backbones import SMOKE, run_with_backbone

from tlcourse.courseware.course import notebooks


@pytest.mark.notebook
def test_notebook_05_runs_the_vgg19_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache: Path):
    path = next(p for p in notebooks() if p.stem.startswith("05"))
    run_with_backbone(path, "vgg19", tmp_path, monkeypatch, **SMOKE["05"])
