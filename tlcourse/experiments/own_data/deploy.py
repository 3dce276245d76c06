"""Step 5 of ``fit``: the chosen candidate as one network, exported and checked in a fresh process.

- :func:`deployed_model` rebuilds the chosen candidate as an ``nn.Module`` that takes normalised
  images: the backbone with the probe folded into its head, the fine-tuned network, or, for a
  probe on an earlier stage, :class:`StageProbe` (the backbone up to that stage, global average
  pooling and the linear layer);
- :func:`export` writes the course's bundle (:func:`tlcourse.inference.export_bundle`: weights,
  class names, preprocessing, TTA) and an ONNX file (:func:`tlcourse.inference.export_onnx`), then
  predicts sample files here and in one fresh Python process (``python -m tlcourse.experiments.own_data.deploy``:
  the bundle through :func:`tlcourse.inference.load_bundle`, the ONNX file through ONNX Runtime and
  the preprocessing stored in the file) and compares.

A stage probe is not a whole registry network, which is what a course bundle rebuilds; it gets a
bundle of its own kind (``"kind": "stage-probe"``: the backbone's name, the stage, the weights, class
names and preprocessing), read by :func:`load_model`, which reads course bundles too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlcourse._io import atomic_save, read_or_explain, read_torch
from tlcourse.data import load_rgb
from tlcourse.experiments.own_data.candidates import Candidate
from tlcourse.features.extract import global_pool
from tlcourse.inference import Bundle, export_bundle, export_onnx, load_bundle, onnx_metadata, predict
from tlcourse.models import Preprocessing, build_backbone, head_of
from tlcourse.stages import split_at

__all__ = ["STAGE_PROBE_FORMAT", "StageProbe", "deployed_model", "export", "load_model", "onnx_predict_files"]

#: The format of a stage probe's bundle (course bundles have their own, :data:`tlcourse.inference.BUNDLE_FORMAT`).
STAGE_PROBE_FORMAT = "stage-probe-1"


class StageProbe(nn.Module):
    """A probe on an earlier stage as one network: backbone up to ``stage``, average pool, linear."""

    def __init__(self, model: nn.Module, stage: str, head: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.lower = split_at(model, stage).lower
        self.head = nn.Linear(head["weight"].shape[1], head["weight"].shape[0])
        with torch.no_grad():
            self.head.weight.copy_(head["weight"])
            self.head.bias.copy_(head["bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(global_pool(self.lower(x)))


def _export_stage_probe(model: StageProbe, path: Path, *, backbone: str, stage: str, class_names: Sequence[str],
                        pre: Preprocessing, tta: str, meta: dict[str, Any]) -> Path:
    """A stage probe's bundle: plain data and tensors, loadable with ``weights_only=True``."""
    return atomic_save({"format": STAGE_PROBE_FORMAT, "kind": "stage-probe", "backbone": backbone, "stage": stage,
                        "class_names": [str(c) for c in class_names], "tta": tta, "meta": json.loads(json.dumps(meta)),
                        "preprocessing": {"resize": pre.resize, "crop": pre.crop, "mean": list(pre.mean),
                                          "std": list(pre.std), "interpolation": pre.interpolation},
                        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)


def load_model(path: str | os.PathLike[str]) -> Bundle:
    """A course bundle (:func:`tlcourse.inference.load_bundle`) or a stage probe's bundle, ready to predict."""
    raw = read_or_explain(Path(path), read_torch, what="model bundle", remedy="Run fit again to export it.")
    if not (isinstance(raw, dict) and raw.get("format") == STAGE_PROBE_FORMAT):
        return load_bundle(path)
    k = len(raw["class_names"])
    dim = raw["state_dict"]["head.weight"].shape[1]
    model = StageProbe(build_backbone(raw["backbone"], pretrained=False), raw["stage"],
                       {"weight": torch.zeros(k, dim), "bias": torch.zeros(k)})
    model.load_state_dict(raw["state_dict"])
    d = raw["preprocessing"]
    pre = Preprocessing(resize=int(d["resize"]), crop=int(d["crop"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                        interpolation=str(d["interpolation"]))
    return Bundle(model=model.eval(), class_names=list(raw["class_names"]), preprocessing=pre, tta=str(raw["tta"]),
                  backbone=str(raw["backbone"]), meta=dict(raw["meta"]))


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


def onnx_predict_files(onnx_file: str | os.PathLike[str], images: Sequence[str]) -> list[dict[str, Any]]:
    """Predict image files with an exported ONNX file alone (its metadata holds the preprocessing)."""
    import onnxruntime

    facts = onnx_metadata(onnx_file)
    d = facts["preprocessing"]
    pre = Preprocessing(resize=int(d["resize"]), crop=int(d["crop"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                        interpolation=str(d["interpolation"]))
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names, out = facts["class_names"], []
    for path in images:
        x = pre.eval_transform()(load_rgb(path)).unsqueeze(0).numpy()
        views = [x, x[..., ::-1].copy()] if facts.get("tta") == "hflip" else [x]
        logits = [session.run(None, {"image": v})[0][0] for v in views]
        probs = np.mean([np.exp(v - v.max()) / np.exp(v - v.max()).sum() for v in logits], axis=0)
        k = int(probs.argmax())
        out.append({"path": str(path), "label": names[k], "confidence": float(probs[k]),
                    "probabilities": {n: float(p) for n, p in zip(names, probs)}})
    return out


def _fresh_process(bundle: Path, onnx_file: Path, images: Sequence[str],
                   timeout: float = 300.0) -> dict[str, list[dict[str, Any]]]:
    """Predictions of the bundle (through :func:`load_model`) and of the ONNX file
    (through ONNX Runtime and the file's own metadata), both in one fresh Python process."""
    run = "import sys; from tlcourse.experiments.own_data.deploy import main; sys.exit(main())"
    cmd = [sys.executable, "-c", run, "--onnx", str(onnx_file), "--bundle", str(bundle)]
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
        bundle = _export_stage_probe(model, out / "model.pt", backbone=meta["backbone"], stage=meta["stage"],
                                     class_names=class_names, pre=pre, tta=tta, meta=meta)
        result["bundle_note"] = "a stage probe's bundle: load it with tlcourse.experiments.own_data.load_model"
    else:
        bundle = export_bundle(model, out / "model.pt", class_names=class_names, preprocessing=pre, tta=tta, meta=meta)
    onnx_file = export_onnx(model, out / "model.onnx", pre.crop, class_names=class_names, preprocessing=pre, tta=tta)
    result["bundle"], result["onnx"] = str(bundle), str(onnx_file)
    there = _fresh_process(bundle, onnx_file, files)
    result["bundle_check"] = _agreement(here, there["bundle"])
    result["onnx_check"] = _agreement(here, there["onnx"])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tlcourse.experiments.own_data.deploy --onnx MODEL.onnx [--bundle MODEL.pt] IMAGE ...``: a JSON line per image and runtime."""
    parser = argparse.ArgumentParser(prog="python -m tlcourse.experiments.own_data.deploy")
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--bundle", default=None)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    if args.bundle is not None:
        bundle = load_model(args.bundle)
        for image in args.images:
            print(json.dumps({"runtime": "bundle", "path": image, **bundle.predict(image).as_dict()}))
    for row in onnx_predict_files(args.onnx, args.images):
        print(json.dumps({"runtime": "onnx", **row}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
