"""A fit run asked for an accelerator that is absent warns and trains on the CPU. select_device's
own warnings: tests/test_train.py::test_select_device_falls_back_to_cpu_with_a_warning.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import TinyNet, WithClasses
from torch.utils.data import DataLoader

from tlcourse.train import fit


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_fit_on_an_absent_accelerator_warns_and_trains_on_cpu(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    model = TinyNet(num_classes=2)
    loader = DataLoader(WithClasses(), batch_size=8)
    with pytest.warns(UserWarning, match=rf"'{device}' was requested but .* falling back to 'cpu'"):
        history = fit(model, loader, loader, epochs=1, device=device, progress=False)
    assert len(history) == 1
    assert all(p.device.type == "cpu" for p in model.parameters())
