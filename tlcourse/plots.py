"""Figures: image grids, training curves, confusion matrices, and comparisons with their intervals.

Every function takes data and returns a ``matplotlib.figure.Figure``; none calls ``plt.show``.

The figures are built with ``matplotlib.figure.Figure`` directly instead of ``pyplot``:

- they need no display and no backend, so tests run headless;
- pyplot does not keep them alive, so a notebook that draws many figures does not leak memory;
- in Jupyter a figure shows exactly once, when it is the last expression of a cell
  (``image_grid(...)`` or ``fig``) or passed to ``display(fig)``. A pyplot figure returned as
  the last expression would be drawn twice.
  Save one with ``fig.savefig("grid.png")``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = ["confusion_matrix", "denormalize", "forest", "image_grid", "intervals"]

RIGHT_COLOR = "green"
WRONG_COLOR = "red"


def denormalize(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Undo ``transforms.Normalize(mean, std)`` and clip to [0, 1] so the images can be shown.

    Why: a normalised image has values roughly in [-2, 2]; matplotlib clips floats to [0, 1],
    so shown as is it looks dark and saturated. ``images`` is ``(C, H, W)`` or ``(N, C, H, W)``;
    the input is not modified.
    """
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images * std_t + mean_t).clamp(0.0, 1.0)


def _to_list(values: Any) -> list[Any]:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().tolist()
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values)


def _display_array(image: Any) -> np.ndarray:
    """A (H, W) or (H, W, C) array imshow understands, from a (C, H, W) tensor or a PIL image."""
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu().float()
        if tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)  # channels last, as matplotlib expects
        array = tensor.numpy()
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        return array
    return np.asarray(image)  # PIL image


def image_grid(
    images: torch.Tensor | Sequence[Any],
    labels: Sequence[int] | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    ncols: int = 8,
    titles: Sequence[str] | None = None,
    predictions: Sequence[int] | torch.Tensor | None = None,
) -> Figure:
    """Show a batch of images in a grid, one axes per image, with labels or predictions as titles.

    Args:
        images: a ``(N, C, H, W)`` tensor (e.g. a batch from a DataLoader), or a list of PIL
            images or ``(C, H, W)`` tensors.
        labels: the true class index of each image.
        class_names: turns class indices into names in the titles.
        mean, std: the normalisation the images went through; given both, the images are
            denormalised for display (see :func:`denormalize`).
        ncols: images per row.
        titles: explicit titles; they win over labels and predictions.
        predictions: predicted class indices. With ``labels`` the title reads
            ``"pred / true"``, green when right and red when wrong.

    Returns:
        A figure with one axes per image.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if mean is not None and std is not None:
            images = denormalize(images, mean, std)
        items: list[Any] = list(images)
    else:
        items = [
            denormalize(im, mean, std) if isinstance(im, torch.Tensor) and mean is not None and std is not None else im
            for im in images
        ]
    n = len(items)
    if n == 0:
        raise ValueError("image_grid needs at least one image.")
    label_list = _to_list(labels) if labels is not None else None
    pred_list = _to_list(predictions) if predictions is not None else None

    def name(index: int) -> str:
        return str(class_names[index]) if class_names is not None else str(index)

    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(1.8 * ncols, 2.0 * nrows), layout="constrained")
    for i, image in enumerate(items):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        array = _display_array(image)
        ax.imshow(array, cmap="gray" if array.ndim == 2 else None)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
        elif pred_list is not None and label_list is not None:
            right = pred_list[i] == label_list[i]
            ax.set_title(
                f"{name(pred_list[i])} / {name(label_list[i])}",
                color=RIGHT_COLOR if right else WRONG_COLOR,
                fontsize=9,
            )
        elif pred_list is not None:
            ax.set_title(name(pred_list[i]), fontsize=9)
        elif label_list is not None:
            ax.set_title(name(label_list[i]), fontsize=9)
    return fig


def _history_columns(history: Any) -> dict[str, list[Any]]:
    """Columns from a ``History``, a list of per-epoch dicts, or a dict of lists."""
    epochs = getattr(history, "epochs", history)  # tlcourse.train.History keeps them in .epochs
    if isinstance(epochs, Mapping):
        return {k: list(v) for k, v in epochs.items()}
    epochs = list(epochs)
    keys = list(epochs[0]) if epochs else []
    return {k: [e.get(k) for e in epochs] for k in keys}


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray | torch.Tensor,
    y_pred: Sequence[int] | np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    normalize: bool = True,
) -> Figure:
    """A confusion matrix: rows are true classes, columns predicted ones, each cell annotated.

    Args:
        y_true, y_pred: class indices in ``[0, len(class_names))``.
        class_names: one name per class, in index order.
        normalize: divide each row by its total, so a cell reads "fraction of class *i*
            predicted as *j*" and the diagonal is per-class recall; comparable across
            classes of different sizes. ``False`` shows raw counts.

    Returns:
        A figure with the matrix axes and its colour bar. Cells are annotated with ``"0.95"``
        (normalised) or counts; with more than 30 classes the annotations are left out
        because they would not be readable.
    """
    true = np.asarray(_to_list(y_true), dtype=np.int64).ravel()
    pred = np.asarray(_to_list(y_pred), dtype=np.int64).ravel()
    k = len(class_names)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels but y_pred has {pred.size}.")
    for arr, what in ((true, "y_true"), (pred, "y_pred")):
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            raise ValueError(f"{what} has labels outside [0, {k}) for {k} class names.")
    counts = np.bincount(true * k + pred, minlength=k * k).reshape(k, k)
    if normalize:
        row_totals = counts.sum(axis=1, keepdims=True)
        matrix = np.divide(counts, row_totals, out=np.zeros((k, k)), where=row_totals > 0)
    else:
        matrix = counts.astype(float)

    size = min(3.0 + 0.5 * k, 16.0)
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(k), labels=[str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(range(k), labels=[str(c) for c in class_names])
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title("Confusion matrix" + (" (each row sums to 1)" if normalize else " (counts)"))
    if k <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0.0
        for i in range(k):
            for j in range(k):
                text = f"{matrix[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black",
                )
    return fig


def _interval_axes(rows: Sequence[Mapping[str, Any]], title: str, xlabel: str, zero: float | None,
                   colour_by: str | None) -> Figure:
    """One row per entry, a dot at ``value`` and a line from ``low`` to ``high`` (in points)."""
    if not rows:
        raise ValueError("Nothing to draw: pass at least one row with value, low and high.")
    longest = max(len(str(r["label"])) for r in rows)  # room for the labels, so the axes keep their width
    fig = Figure(figsize=(max(6.4, 3.6 + 0.075 * longest), 0.9 + 0.42 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    for i, r in enumerate(reversed(list(rows))):
        value, low, high = (100 * float(r[k]) for k in ("value", "low", "high"))
        strong = bool(r.get(colour_by, True)) if colour_by else True
        colour = "tab:blue" if strong else "tab:gray"
        if math.isfinite(low) and math.isfinite(high):
            ax.plot([low, high], [i, i], color=colour, lw=2.2, solid_capstyle="butt")
        ax.plot([value], [i], "o", color=colour, ms=6)
    labels = [str(r["label"]) for r in reversed(list(rows))]
    ax.set_yticks(range(len(rows)), labels=labels)
    if zero is not None:
        ax.axvline(zero, color="black", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def forest(rows: Sequence[Mapping[str, Any]], *, title: str = "Difference with its 95% interval",
           xlabel: str = "difference in test accuracy (points)") -> Figure:
    """A forest plot: each comparison's difference (``value``) with its interval (``low``, ``high``),
    fractions of 1, drawn in points around a dashed zero line. Rows whose ``measurable`` is false
    are grey: their interval and test do not rule out zero (:func:`tlcourse.evaluation.measurable`).

    ``rows``: ``[{"label": "backbone 1e-4 minus 1e-3", "value": -0.02, "low": -0.04, "high": 0.0,
    "measurable": False}, ...]``, drawn top to bottom.
    """
    return _interval_axes(rows, title, xlabel, 0.0, "measurable")


def intervals(rows: Sequence[Mapping[str, Any]], *, title: str = "Accuracy with its 95% interval",
              xlabel: str = "test accuracy (%)") -> Figure:
    """A dot plot of estimates (``value``) with intervals (``low``, ``high``), fractions of 1, one
    row each, top to bottom; no bars from zero, so the axis shows where the estimates differ."""
    return _interval_axes(rows, title, xlabel, None, None)
