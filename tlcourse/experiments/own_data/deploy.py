"""Step 5 of ``fit``: the chosen candidate as one network, exported and checked in a fresh process.

- :func:`deployed_model` rebuilds the chosen candidate as an ``nn.Module`` that takes normalised
  images: the backbone with the probe folded into its head, the fine-tuned network, or, for a
  probe on an earlier stage, :class:`tlcourse.inference.StageProbe` (the backbone up to that stage,
  global average pooling and the linear layer), which gets a bundle of its own kind;
- :func:`export` writes the bundle (:func:`tlcourse.inference.export_bundle` or
  :func:`~tlcourse.inference.export_stage_probe`) and an ONNX file (:func:`tlcourse.inference.export_onnx`),
  then predicts sample files here and in one fresh Python process (``python -m tlcourse.inference
  --onnx model.onnx --bundle model.pt FILES``: the bundle through :func:`tlcourse.inference.load_bundle`,
  the ONNX file through ONNX Runtime and the preprocessing stored in the file) and compares.
  The fresh process imports :mod:`tlcourse.inference` alone, not this package.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tlcourse.inference import StageProbe, export_bundle, export_onnx, export_stage_probe, predict
from tlcourse.models import Preprocessing, build_backbone, head_of

if TYPE_CHECKING:
    from tlcourse.experiments.own_data.candidates import Candidate

__all__ = ["deployed_model", "export"]


def deployed_model(c: Candidate, num_classes: int) -> nn.Module:
    """The chosen candidate as a network from normalised images to logits (eval mode, CPU)."""
    if c.strategy in ("probe_last", "probe_early"):
        model = build_backbone(c.backbone, num_classes=num_classes)
        if c.strategy == "probe_early":
            return StageProbe(model, c.layer, c.weights).eval()
        with torch.no_grad():
            head_of(model).weight.copy_(c.weights["weight"])
            head_of(model).bias.copy_(c.weights["bias"])
        return model.eval()
    model = build_backbone(c.backbone, num_classes=num_classes, pretrained=False)
    model.load_state_dict(c.weights)
    return model.eval()


def _fresh_process(bundle: Path, onnx_file: Path, images: Sequence[str],
                   timeout: float = 300.0) -> dict[str, list[dict[str, Any]]]:
    """Predictions of the bundle (through :func:`tlcourse.inference.load_bundle`) and of the ONNX file
    (through ONNX Runtime and the file's own metadata), both in one fresh Python process."""
    cmd = [sys.executable, "-m", "tlcourse.inference", "--onnx", str(onnx_file), "--bundle", str(bundle)]
    done = subprocess.run([*cmd, *images], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"The prediction subprocess failed ({done.returncode}):\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {kind: [{k: v for k, v in r.items() if k != "runtime"} for r in rows if r["runtime"] == kind]
            for kind in ("bundle", "onnx")}


def _agreement(here: list[dict[str, Any]], there: list[dict[str, Any]]) -> dict[str, Any]:
    same = [h["label"] for h in here] == [t["label"] for t in there]
    diff = max((abs(h["probabilities"][k] - t["probabilities"][k]) for h, t in zip(here, there) for k in h["probabilities"]),
               default=float("nan"))
    return {"same_labels": bool(same and len(here) == len(there)), "max_probability_difference": float(diff)}


def export(model: nn.Module, out: Path, *, class_names: Sequence[str], pre: Preprocessing, tta: str,
           files: Sequence[str], meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.pt`` and ``model.onnx`` to ``out``; check both in one fresh process."""
    result: dict[str, Any] = {"files": [str(f) for f in files]}
    here = [predict(model, f, preprocessing=pre, class_names=class_names, tta=tta).as_dict() for f in files]
    if isinstance(model, StageProbe):
        bundle = export_stage_probe(model, out / "model.pt", backbone=meta["backbone"], stage=meta["stage"],
                                    class_names=class_names, preprocessing=pre, tta=tta, meta=meta)
        result["bundle_note"] = "a stage probe's bundle: load it with tlcourse.inference.load_bundle"
    else:
        bundle = export_bundle(model, out / "model.pt", class_names=class_names, preprocessing=pre, tta=tta, meta=meta)
    onnx_file = export_onnx(model, out / "model.onnx", pre.crop, class_names=class_names, preprocessing=pre, tta=tta)
    result["bundle"], result["onnx"] = str(bundle), str(onnx_file)
    there = _fresh_process(bundle, onnx_file, files)
    result["bundle_check"] = _agreement(here, there["bundle"])
    result["onnx_check"] = _agreement(here, there["onnx"])
    return result
