"""Grad-CAM: which part of the image made the network say "alien"?

Grad-CAM (Selvaraju et al., 2017) weighs the feature maps of one convolutional layer by how much
the chosen class score depends on them: for each channel, the gradient of the score with respect
to that channel, averaged over the positions, is the channel's weight. The weighted sum of the
maps, with negative values clipped (ReLU), is a coarse heat map at the layer's resolution (7x7 for
the last stage of a 224 px EfficientNet-Lite), upsampled to the input size.

The last convolutional stage is the usual choice: it has the most class-specific features and
still has a spatial layout. :func:`gradcam` works on frozen models too: it makes the captured
activation a leaf that requires a gradient, so no parameter needs ``requires_grad``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from tlcourse.hooks import capture
from tlcourse.models import backbone_spec, stage_modules

__all__ = ["gradcam", "gradcam_grid", "overlay", "resolve_layer"]


def resolve_layer(model: nn.Module, layer: str | nn.Module | None = None) -> nn.Module:
    """The module whose output Grad-CAM uses.

    ``None``: the last module of a registry backbone's deepest stage (``head_conv`` on
    EfficientNet-Lite, ``layer4`` on ResNet), or the last ``Conv2d`` of any other model.
    A string is a stage name of a registry backbone or a dotted module path (``"blocks.6"``).
    """
    if isinstance(layer, nn.Module):
        return layer
    try:
        spec = backbone_spec(model)
    except ValueError:
        spec = None
    if layer is None:
        if spec is not None:
            convolutional = [name for name in spec.stage_names if name != "fc"]  # VGG's fc stage is not spatial
            return dict(stage_modules(model))[convolutional[-1]][-1]
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError("The model has no Conv2d layer; pass the layer to explain")
        return convs[-1]
    if spec is not None and layer in spec.stage_names:
        return dict(stage_modules(model))[layer][-1]
    return model.get_submodule(layer)


def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layer: str | nn.Module | None = None,
    class_index: int | Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM heat maps for a batch: ``(cams (N, H, W) in [0, 1], logits (N, classes))``.

    Args:
        model: any classifier; run in eval mode here (its mode is restored afterwards).
        x: a normalised input batch ``(N, 3, H, W)``; the maps have its height and width.
        layer: see :func:`resolve_layer`.
        class_index: the class to explain per image (an int for all of them, or one per image);
            ``None`` explains each image's predicted class.

    Each map is divided by its own maximum, so maps show where, not how strongly; a map with no
    positive evidence at all is all zeros.
    """
    if x.ndim != 4:
        raise ValueError(f"gradcam needs a batch (N, C, H, W), got shape {tuple(x.shape)}")
    target = resolve_layer(model, layer)
    was_training = model.training
    model.eval()
    try:
        # detach=False: the recorded activation stays in the graph (a leaf that requires grad on
        # a frozen model), so the class score's gradient reaches it.
        with torch.enable_grad(), capture(model, {"activation": target}, detach=False, stop_after=False) as hooks:
            logits = model(x)
            if "activation" not in hooks.outputs:
                raise ValueError("The chosen layer did not run in the forward pass")
            if class_index is None:
                chosen = logits.argmax(1)
            else:
                chosen = torch.as_tensor(class_index, device=logits.device).long().expand(len(logits))
            score = logits.gather(1, chosen.view(-1, 1)).sum()
            activation = hooks.outputs["activation"]
            (grads,) = torch.autograd.grad(score, activation)
    finally:
        model.train(was_training)
    activation = activation.detach()
    if activation.ndim != 4:
        raise ValueError(f"Grad-CAM needs a spatial layer (N, C, H, W); this one gives {tuple(activation.shape)}")
    weights = grads.mean(dim=(2, 3), keepdim=True)  # one weight per channel: its average gradient
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).cpu(), logits.detach()


def overlay(image: torch.Tensor | np.ndarray, cam: torch.Tensor | np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Blend a heat map (H, W) in [0, 1] onto an RGB image: an (H, W, 3) float array in [0, 1].

    ``image`` is ``(3, H, W)`` (a tensor in [0, 1], e.g. denormalised) or ``(H, W, 3)``.
    """
    img = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    if img.max() > 1.0:
        img = img / 255.0
    heat = cam.detach().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam)
    if heat.shape != img.shape[:2]:
        raise ValueError(f"The map {heat.shape} and the image {img.shape[:2]} differ in size")
    colours = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    return np.clip((1 - alpha) * img + alpha * colours, 0, 1)


def gradcam_grid(
    images: torch.Tensor,
    cams: torch.Tensor,
    titles: Sequence[str] | None = None,
    *,
    colors: Sequence[str] | None = None,
    ncols: int = 4,
) -> Figure:
    """Each image (``(N, 3, H, W)`` in [0, 1]) above its Grad-CAM overlay; returns a Figure."""
    n = len(images)
    if n == 0 or len(cams) != n:
        raise ValueError(f"gradcam_grid needs as many maps as images (got {n} images, {len(cams)} maps)")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.2 * ncols, 4.4 * nrows), layout="constrained")
    for i in range(n):
        row, col = divmod(i, ncols)
        top = fig.add_subplot(2 * nrows, ncols, 2 * row * ncols + col + 1)
        bottom = fig.add_subplot(2 * nrows, ncols, (2 * row + 1) * ncols + col + 1)
        top.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        bottom.imshow(overlay(images[i], cams[i]))
        for ax in (top, bottom):
            ax.set_axis_off()
        if titles is not None:
            top.set_title(str(titles[i]), fontsize=8, color=colors[i] if colors is not None else "black")
    return fig
