"""Using a trained model: predictions for image files, test-time augmentation, and export bundles.

A trained network is only usable with the exact input pipeline it was trained with (resize,
crop, normalisation) and the names of its classes. A bare ``state_dict`` holds neither, so
:func:`export_bundle` writes one file with all of it:

- ``state_dict``: the weights (tensors only);
- ``backbone`` and ``num_classes``: how to rebuild the architecture (a registry name of
  :mod:`tlcourse.models`);
- ``class_names``: output index -> name;
- ``preprocessing``: resize, crop, mean, std and interpolation, stated explicitly (not "whatever
  the backbone's default is"), so a reader of the file knows what the model expects;
- ``tta``: the test-time augmentation the reported accuracy used (``"none"`` or ``"hflip"``).

Everything is plain data (dicts, lists, strings, numbers, tensors), so :func:`load_bundle`
reads it with ``torch.load(weights_only=True)``, which refuses to run pickled code.

Run ``python -m tlcourse.inference BUNDLE IMAGE [IMAGE ...]`` to predict in a fresh process; it
prints one JSON object per image (:func:`predict_in_subprocess` does this from Python). With
``--onnx MODEL.onnx`` an ONNX file predicts the same images too (:func:`onnx_predict_files`).

A probe on an earlier stage (``fit`` chooses these) is not a whole registry network: it is a
:class:`StageProbe` (the backbone up to that stage, global average pooling, a linear layer) and has
a bundle of its own kind (:func:`export_stage_probe`), which :func:`load_bundle` reads too.

For deployment without PyTorch, :func:`export_onnx` writes the network as an ONNX graph that ONNX
Runtime (or any other ONNX runtime) executes; the same facts as in a bundle (class names,
preprocessing, TTA) travel in the ONNX file's metadata, read back by :func:`onnx_metadata`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from tlcourse._io import atomic_path, atomic_save, format_problem, read_or_explain
from tlcourse.data import load_rgb, to_rgb
from tlcourse.features.extract import global_pool
from tlcourse.models import Preprocessing, backbone_spec, build_backbone
from tlcourse.stages import split_at

__all__ = [
    "BUNDLE_FORMAT",
    "STAGE_PROBE_FORMAT",
    "TTA_MODES",
    "Bundle",
    "Prediction",
    "StageProbe",
    "export_bundle",
    "export_onnx",
    "export_stage_probe",
    "load_bundle",
    "onnx_metadata",
    "onnx_predict_files",
    "predict",
    "predict_in_subprocess",
    "predict_proba",
    "tta_views",
]

#: Bumped when the bundle layout changes; :func:`load_bundle` refuses other versions.
BUNDLE_FORMAT = 1

#: The format of a stage probe's bundle (:func:`export_stage_probe`); :func:`load_bundle` reads both kinds.
STAGE_PROBE_FORMAT = "stage-probe-1"

#: Test-time augmentations :func:`predict_proba` knows.
TTA_MODES = ("none", "hflip")


# --------------------------------------------------------------------------------------------
# Test-time augmentation
# --------------------------------------------------------------------------------------------


def tta_views(x: torch.Tensor, tta: str = "hflip") -> list[torch.Tensor]:
    """The views of a batch ``(N, C, H, W)`` that test-time augmentation averages over.

    ``"none"``: the batch itself. ``"hflip"``: the batch and its mirror image (flip along the
    width). A flip is the cheapest label-preserving change for photos of objects: an alien
    facing left is still an alien.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"Unknown test-time augmentation {tta!r}; choose one of {TTA_MODES}")
    return [x] if tta == "none" else [x, x.flip(-1)]


def predict_proba(model: nn.Module, x: torch.Tensor, *, tta: str = "none", batch_size: int = 64) -> torch.Tensor:
    """Class probabilities ``(N, classes)`` for a normalised batch, averaged over the TTA views.

    Softmax probabilities (not logits) are averaged, so a very confident view cannot outvote the
    other by the size of its logits alone. The model runs in eval mode under inference mode;
    its previous mode is restored.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                views = tta_views(x[i:i + batch_size], tta)
                probs = torch.stack([model(v).float().softmax(dim=1) for v in views])
                out.append(probs.mean(dim=0).cpu())
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("No images to predict")
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Single images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image."""

    label: str
    index: int
    confidence: float  # the probability of ``label``
    probabilities: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_image(image: str | os.PathLike[str] | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image)
    return load_rgb(image)  # decodes any mode (grey, palette, RGBA) to RGB and refuses broken files


def predict(
    model: nn.Module,
    image: str | os.PathLike[str] | Image.Image,
    *,
    preprocessing: Preprocessing,
    class_names: Sequence[str],
    tta: str = "none",
) -> Prediction:
    """Predict the class of one image file (or PIL image) with ``model``.

    The image goes through ``preprocessing.eval_transform()`` (resize, centre crop, normalise),
    exactly as the validation images did.
    """
    x = preprocessing.eval_transform()(_load_image(image)).unsqueeze(0)
    probs = predict_proba(model, x, tta=tta)[0]
    if len(probs) != len(class_names):
        raise ValueError(f"The model has {len(probs)} outputs but {len(class_names)} class names were given")
    index = int(probs.argmax())
    return Prediction(
        label=str(class_names[index]),
        index=index,
        confidence=float(probs[index]),
        probabilities={str(name): float(p) for name, p in zip(class_names, probs)},
    )


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------

#: The ONNX opset :func:`export_onnx` targets (ONNX Runtime 1.16 and later run it).
ONNX_OPSET = 17


def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The (n_out, n_in) averaging matrix of adaptive average pooling along one axis."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-(i + 1) * n_in // n_out)  # PyTorch's floor/ceil bins
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


class _FixedAdaptiveAvgPool(nn.Module):
    """``AdaptiveAvgPool2d`` for one fixed input size, as two matrix products.

    ONNX has no adaptive pooling whose output size does not divide its input size (VGG's
    ``AdaptiveAvgPool2d((7, 7))`` on the 5x5 map of a 160 px image); for a fixed size it is a
    linear map, which exports as ``MatMul``.
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", _pool_matrix(in_hw[0], out_hw[0]), persistent=False)
        self.register_buffer("cols", _pool_matrix(in_hw[1], out_hw[1]).T.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows @ x @ self.cols


def _swap_adaptive_pools(model: nn.Module, dummy: torch.Tensor) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace the adaptive average pools ONNX cannot express at this input size; returns what to restore."""
    sizes: dict[str, tuple[int, int]] = {}
    pools = {name: m for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
             for name, m in pools.items()]
    try:
        with torch.no_grad():
            model(dummy)
    finally:
        for h in hooks:
            h.remove()
    swapped = []
    for name, pool in pools.items():
        if name not in sizes:
            continue
        wanted = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size, pool.output_size)
        out_hw = tuple(s if o is None else int(o) for o, s in zip(wanted, sizes[name]))
        if all(s % o == 0 for s, o in zip(sizes[name], out_hw)):
            continue  # ONNX exports this one as it is
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _FixedAdaptiveAvgPool(sizes[name], out_hw))  # type: ignore[arg-type]
        swapped.append((parent, child, pool))
    return swapped


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    image_size: int,
    *,
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    tta: str = "none",
    opset: int = ONNX_OPSET,
) -> Path:
    """Export ``model`` to an ONNX file: input ``image`` ``(N, 3, image_size, image_size)``, output ``logits``.

    The batch size is free; the image size is fixed (the padding of TF-style convolutions is
    computed from it, and an adaptive average pool whose output size does not divide its input,
    such as VGG's at 160 px, is exported as the equivalent matrix products for that size). The input is the *normalised* tensor, as for the PyTorch model, so the
    file states the preprocessing that produces it: ``class_names``, ``preprocessing`` and ``tta``
    are stored as JSON in the model's metadata (:func:`onnx_metadata` reads them back). The model
    is exported in eval mode on the CPU (its mode and device are restored) with PyTorch's
    TorchScript-based exporter, and the file is written atomically: never half written.
    """
    import onnx

    if tta not in TTA_MODES:
        raise ValueError(f"Unknown test-time augmentation {tta!r}; choose one of {TTA_MODES}")
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval().cpu()
    dummy = torch.zeros(1, 3, image_size, image_size)
    swapped = _swap_adaptive_pools(model, dummy)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            # The legacy exporter warns that it is legacy, and TF-style padding that it is computed
            # from the (fixed) image size; neither changes the exported graph.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*(legacy TorchScript-based ONNX|feature will be removed)")
            torch.onnx.export(model, (dummy,), str(tmp), input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset, dynamo=False)
            graph = onnx.load(str(tmp))
            facts: dict[str, Any] = {"tta": tta, "image_size": int(image_size), "input": "normalised image, NCHW float32"}
            if class_names is not None:
                facts["class_names"] = [str(c) for c in class_names]
            if preprocessing is not None:
                facts["preprocessing"] = _preprocessing_dict(preprocessing)
            try:
                facts["backbone"] = backbone_spec(model).name
            except ValueError:
                pass
            onnx.helper.set_model_props(graph, {k: json.dumps(v) for k, v in facts.items()})
            onnx.checker.check_model(graph)
            onnx.save(graph, str(tmp))
    finally:
        for parent, child, pool in swapped:
            setattr(parent, child, pool)
        model.to(device).train(was_training)
    return Path(path)


def onnx_metadata(source: Any) -> dict[str, Any]:
    """The facts :func:`export_onnx` stored: from a file path or an ``onnxruntime.InferenceSession``."""
    if hasattr(source, "get_modelmeta"):
        props = dict(source.get_modelmeta().custom_metadata_map)
    else:
        import onnx

        graph = read_or_explain(Path(source), lambda p: onnx.load(str(p), load_external_data=False),
                                what="ONNX model", remedy="Export it again with export_onnx.",
                                check=lambda g: None if len(g.graph.node) else "it holds no graph")
        props = {p.key: p.value for p in graph.metadata_props}
    return {k: json.loads(v) for k, v in props.items()}


# --------------------------------------------------------------------------------------------
# Bundles
# --------------------------------------------------------------------------------------------


def _preprocessing_dict(pre: Preprocessing) -> dict[str, Any]:
    return {"resize": int(pre.resize), "crop": int(pre.crop), "mean": [float(v) for v in pre.mean],
            "std": [float(v) for v in pre.std], "interpolation": str(pre.interpolation)}


def _preprocessing_from(d: Mapping[str, Any]) -> Preprocessing:
    missing = {"resize", "crop", "mean", "std", "interpolation"} - set(d)
    if missing:
        raise ValueError(f"The bundle's preprocessing lacks {sorted(missing)}")
    return Preprocessing(resize=int(d["resize"]), crop=int(d["crop"]), mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
                         std=tuple(float(v) for v in d["std"]), interpolation=str(d["interpolation"]))  # type: ignore[arg-type]


def export_bundle(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str],
    preprocessing: Preprocessing,
    tta: str = "none",
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a registry backbone), its class names and preprocessing to one file.

    ``meta`` holds extra plain values (accuracy, date, dataset) for the reader of the file.
    The file is written atomically (``tlcourse._io``), so it is never half written.
    """
    spec = backbone_spec(model)
    if tta not in TTA_MODES:
        raise ValueError(f"Unknown test-time augmentation {tta!r}; choose one of {TTA_MODES}")
    num_classes = int(model.get_submodule(spec.head).out_features)
    if len(class_names) != num_classes:
        raise ValueError(f"The model has {num_classes} outputs but {len(class_names)} class names were given")
    bundle = {
        "format": BUNDLE_FORMAT,
        "backbone": spec.name,
        "num_classes": num_classes,
        "class_names": [str(c) for c in class_names],
        "preprocessing": _preprocessing_dict(preprocessing),
        "tta": tta,
        "meta": json.loads(json.dumps(dict(meta or {}))),  # plain JSON values only: loadable with weights_only
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_save(bundle, path)


@dataclass
class Bundle:
    """A reloaded model with everything needed to use it on new images."""

    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    tta: str = "none"
    backbone: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, image: str | os.PathLike[str] | Image.Image) -> Prediction:
        """Predict one image file with the bundle's own preprocessing and TTA."""
        return predict(self.model, image, preprocessing=self.preprocessing, class_names=self.class_names, tta=self.tta)


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


def export_stage_probe(model: StageProbe, path: str | os.PathLike[str], *, backbone: str, stage: str,
                       class_names: Sequence[str], preprocessing: Preprocessing, tta: str = "none",
                       meta: Mapping[str, Any] | None = None) -> Path:
    """A stage probe's bundle: plain data and tensors, loadable with ``weights_only=True`` (atomically written)."""
    return atomic_save({"format": STAGE_PROBE_FORMAT, "kind": "stage-probe", "backbone": backbone, "stage": stage,
                        "class_names": [str(c) for c in class_names], "tta": tta,
                        "meta": json.loads(json.dumps(dict(meta or {}))),
                        "preprocessing": _preprocessing_dict(preprocessing),
                        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)


def _not_a_bundle(raw: Any) -> str | None:
    if isinstance(raw, dict) and raw.get("format") == STAGE_PROBE_FORMAT:
        return None
    problem = format_problem(raw, BUNDLE_FORMAT)
    return None if problem is None else f"not a tlcourse model bundle of format {BUNDLE_FORMAT}: {problem}"


def load_bundle(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Bundle:
    """Rebuild the model of an :func:`export_bundle` or :func:`export_stage_probe` file (no download:
    the weights are in it)."""
    raw = read_or_explain(Path(path), lambda p: torch.load(p, map_location=device, weights_only=True),
                          what="model bundle", remedy="Export it again with export_bundle, or ask for a new copy.",
                          check=_not_a_bundle)
    if raw["format"] == STAGE_PROBE_FORMAT:  # the backbone up to its stage, pooled, and a linear layer
        k, dim = len(raw["class_names"]), raw["state_dict"]["head.weight"].shape[1]
        model: nn.Module = StageProbe(build_backbone(raw["backbone"], pretrained=False), raw["stage"],
                                      {"weight": torch.zeros(k, dim), "bias": torch.zeros(k)})
    else:
        model = build_backbone(raw["backbone"], num_classes=int(raw["num_classes"]), pretrained=False)
    model.load_state_dict(raw["state_dict"])  # strict: every tensor must fit
    model.to(device).eval()
    return Bundle(model=model, class_names=list(raw["class_names"]), preprocessing=_preprocessing_from(raw["preprocessing"]),
                  tta=str(raw.get("tta", "none")), backbone=str(raw["backbone"]), meta=dict(raw.get("meta", {})))


def predict_in_subprocess(bundle_path: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]],
                          *, timeout: float = 300.0) -> list[dict[str, Any]]:
    """Load the bundle in a fresh Python process and predict ``images`` there.

    Nothing of the current process (its model object, imported modules, random state) reaches
    the child: this shows that the file alone is enough. Returns one
    :meth:`Prediction.as_dict` per image, in order, with its ``path`` and ``runtime``.
    """
    cmd = [sys.executable, "-m", "tlcourse.inference", str(bundle_path), *map(str, images)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"The prediction subprocess failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def onnx_predict_files(onnx_file: str | os.PathLike[str], images: Sequence[str]) -> list[dict[str, Any]]:
    """Predict image files with an exported ONNX file alone (its metadata holds the preprocessing and TTA)."""
    import onnxruntime

    facts = onnx_metadata(onnx_file)
    pre = _preprocessing_from(facts["preprocessing"])
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tlcourse.inference BUNDLE IMAGE ...``: one JSON line per image, naming its ``runtime``.
    With ``--onnx MODEL.onnx`` the ONNX file predicts the images too (the bundle, optional, then comes as
    ``--bundle MODEL.pt``): ``fit`` checks its exports this way, both in one fresh process."""
    parser = argparse.ArgumentParser(prog="python -m tlcourse.inference",
                                     usage="%(prog)s BUNDLE IMAGE [IMAGE ...]\n"
                                           "       %(prog)s --onnx MODEL.onnx [--bundle MODEL.pt] IMAGE [IMAGE ...]")
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--onnx")
    parser.add_argument("--bundle")
    args = parser.parse_args(argv)
    bundle, images = (args.bundle, args.paths) if args.onnx else (next(iter(args.paths), None), args.paths[1:])
    if not images:
        parser.print_usage(sys.stderr)
        return 2
    if bundle is not None:
        model = load_bundle(bundle)
        for image in images:
            print(json.dumps({"runtime": "bundle", "path": image, **model.predict(image).as_dict()}))
    for row in onnx_predict_files(args.onnx, images) if args.onnx else []:
        print(json.dumps({"runtime": "onnx", **row}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
