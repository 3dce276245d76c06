"""Behaviour of tlcourse.plots: every function returns a Figure with the content a learner expects.

The figures are plain ``matplotlib.figure.Figure`` objects, so no display or backend is needed.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image

from tlcourse.plots import confusion_matrix, denormalize, image_grid

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet statistics


def renders(fig: Figure) -> bool:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=30)
    return buffer.getbuffer().nbytes > 0


def test_denormalize_inverts_normalize_and_clips():
    images = torch.rand(2, 3, 4, 4)
    normalised = (images - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(denormalize(normalised, MEAN, STD), images, atol=1e-6)
    extreme = torch.full((3, 2, 2), 10.0)
    out = denormalize(extreme, MEAN, STD)
    assert out.max() == 1.0 and out.min() >= 0.0
    assert torch.equal(extreme, torch.full((3, 2, 2), 10.0))  # input left untouched


def test_image_grid_one_axes_per_image_with_class_names():
    images = torch.rand(10, 3, 8, 8)
    fig = image_grid(images, labels=torch.arange(10) % 2, class_names=["cat", "dog"], ncols=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 10
    assert [ax.get_title() for ax in fig.axes[:3]] == ["cat", "dog", "cat"]
    assert renders(fig)


def test_image_grid_denormalises_when_mean_and_std_are_given():
    normalised = torch.full((1, 3, 4, 4), -3.0)  # far below 0 once displayed raw
    fig = image_grid(normalised, mean=MEAN, std=STD)
    shown = fig.axes[0].get_images()[0].get_array()
    assert np.asarray(shown).min() >= 0.0 and np.asarray(shown).max() <= 1.0


def test_image_grid_colours_right_and_wrong_predictions():
    fig = image_grid(
        torch.rand(3, 3, 8, 8),
        labels=[0, 1, 2],
        predictions=[0, 2, 2],
        class_names=["ant", "bee", "wasp"],
    )
    titles = [ax.title for ax in fig.axes]
    assert [t.get_text() for t in titles] == ["ant / ant", "wasp / bee", "wasp / wasp"]
    colours = [to_rgba(t.get_color()) for t in titles]
    assert colours == [to_rgba("green"), to_rgba("red"), to_rgba("green")]


def test_image_grid_accepts_pil_images_grayscale_and_explicit_titles():
    pil = [Image.new("RGB", (8, 8), color=(255, 0, 0)) for _ in range(2)]
    fig = image_grid(pil, titles=["first", "second"])
    assert [ax.get_title() for ax in fig.axes] == ["first", "second"]
    gray = image_grid(torch.rand(2, 1, 8, 8))
    assert np.asarray(gray.axes[0].get_images()[0].get_array()).ndim == 2
    assert renders(gray)


def test_confusion_matrix_annotates_row_normalised_cells():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1, 0, 2]
    fig = confusion_matrix(y_true, y_pred, ["a", "b", "c"])
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 9
    assert texts[:3] == ["0.75", "0.25", "0.00"]  # row "a": 3 of 4 right, 1 predicted as "b"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert ax.get_xlabel() == "Predicted" and ax.get_ylabel() == "True"
    assert renders(fig)


def test_confusion_matrix_counts_and_tensor_inputs():
    fig = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([1, 1, 1]), ["x", "y"], normalize=False)
    assert [t.get_text() for t in fig.axes[0].texts] == ["0", "1", "0", "2"]


def test_confusion_matrix_rejects_labels_without_a_name():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], ["a", "b"])


def test_forest_and_interval_plots_draw_each_row_with_its_interval():
    from tlcourse import plots

    rows = [{"label": "A minus B", "value": 0.05, "low": 0.01, "high": 0.09, "measurable": True},
            {"label": "C minus B", "value": -0.01, "low": -0.04, "high": 0.02, "measurable": False}]
    fig = plots.forest(rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["C minus B", "A minus B"]
    lines = [tuple(line.get_xdata()) for line in ax.lines if len(line.get_xdata()) == 2 and line.get_linestyle() == "-"]
    assert (1.0, 9.0) in [tuple(round(v, 6) for v in x) for x in lines], "intervals are drawn in points"
    assert any(line.get_linestyle() == "--" and tuple(line.get_xdata()) == (0, 0) for line in ax.lines)
    dots = plots.intervals([{"label": "probe", "value": 0.9, "low": 0.85, "high": 0.93}])
    assert dots.axes[0].get_xlim()[0] > 50, "no bars from zero: the axis starts near the estimates"
    with pytest.raises(ValueError, match="Nothing to draw"):
        plots.forest([])
