"""The decision-matrix advisor: place a dataset on the size x similarity matrix and pick a strategy.

- :func:`similarity_score` puts a dataset on the similarity axis with a number. A pretrained
  network's BatchNorm layers store the mean and variance of their inputs over ImageNet (the
  running statistics). Feeding a new dataset through the network and comparing its activation
  statistics with those running statistics measures how far the dataset is from ImageNet, with no
  ImageNet image at hand: a Fréchet (2-Wasserstein) distance between per-channel Gaussians,
  averaged over all BatchNorm layers. The score maps that distance to (0, 1]: 1 is ImageNet itself.
- :func:`recommend` turns images per class and a similarity into a :class:`Recommendation`.
- :func:`advise_folder` does both for a learner's own ``folder/<class>/<image>`` dataset.
- :func:`matrix_figure` draws the matrix (both articles' advice where they disagree, every
  strategy a measured tie leaves standing); :func:`advisor_panel` adds ipywidgets sliders.

Why not the ImageNet head's confidence (mean max-softmax)? Measured on the course datasets it does
not separate photos from scans: brain MRI scans come out *more* confidently "ImageNet-like" than
CIFAR-10 photos (notebook 04 shows the numbers). A network can be confidently wrong out of domain.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, Subset

from tlcourse.data import folder_dataset
from tlcourse.experiments import decision_matrix, findings, results_file
from tlcourse.hooks import capture
from tlcourse.models import DEFAULT_BACKBONE, backbone_spec, build_backbone
from tlcourse.strategies import (
    SIMILARITY_BOUNDARY,
    SIZE_BOUNDARY,
    STRATEGY_LABELS,
    TEXTBOOK,
    quadrant_of,
    quadrant_title,
)

__all__ = [
    "CALIBRATION_SETS",
    "CHECK_SETS",
    "DISTANCE_AT_HALF",
    "REFERENCE_RESULTS",
    "SCORE_SIZE",
    "FolderAdvice",
    "QuadrantEvidence",
    "Recommendation",
    "SimilarityScore",
    "advise_folder",
    "advisor_panel",
    "calibrate_distance",
    "distance_to_score",
    "matrix_figure",
    "recommend",
    "reference_evidence",
    "reference_path",
    "similarity_score",
]

#: The datasets the 0.5 boundary is calibrated on (one photo set, one scan set: the two domains
#: of the reference decision matrix) and the ones it is checked on, which played no part in it.
CALIBRATION_SETS: Mapping[str, tuple[str, ...]] = {"similar": ("cifar10",), "dissimilar": ("pneumoniamnist",)}
CHECK_SETS: Mapping[str, tuple[str, ...]] = {"similar": ("alien-vs-predator",),
                                             "dissimilar": ("brain-mri", "breastmnist")}
#: The BatchNorm-statistics distance that maps to a score of 0.5: :func:`calibrate_distance` of
#: CIFAR-10 (0.189) and PneumoniaMNIST (0.359), 200 training images each, EfficientNet-Lite0 at
#: 96 px, seed 0 (notebook 04 recomputes it and checks the other course datasets against it).
#: Another backbone or resolution needs its own calibration.
DISTANCE_AT_HALF = 0.274
#: The input size the score is calibrated at: the resolution of the reference decision matrix.
SCORE_SIZE = 96
#: The committed reference run of the decision matrix, the only source of "measured" advice.
REFERENCE_RESULTS = "04_decision_matrix_reference.json"


# --------------------------------------------------------------------------------------------
# recommend
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    """What :func:`recommend` advises, and why.

    ``alternatives`` are the textbook's other strategies for the quadrant; ``measured_winner``
    is the strategy that won the quadrant in a measurement (notebook 04), when given.
    """

    strategy: str  # one of tlcourse.strategies.STRATEGIES
    quadrant: str
    explanation: str
    n_per_class: float
    similarity: float
    alternatives: tuple[str, ...] = ()
    measured_winner: str | None = None
    evidence: QuadrantEvidence | None = None

    def __str__(self) -> str:
        lines = [f"{self.n_per_class:g} images/class, similarity {self.similarity:.2f} -> quadrant "
                 + quadrant_title(self.quadrant),
                 f"recommended: {STRATEGY_LABELS.get(self.strategy, self.strategy)}",
                 f"why: {self.explanation}"]
        if self.alternatives:
            lines.append("also worth a try: " + ", ".join(STRATEGY_LABELS.get(a, a) for a in self.alternatives))
        if self.evidence is not None:
            lines.append(f"measured ({self.evidence.scale}): {self.evidence.verdict}")
            lines += [f"finding {f.id}: {f.do}" for f in self.evidence.quoted
                      if f.id.startswith(("matrix.", "sources.")) or self.strategy in ("partial_ft", "full_ft")]
        elif self.measured_winner is not None:
            same = "the textbook's choice" if self.measured_winner == self.strategy else "not the textbook's choice"
            lines.append(f"highest mean in the results passed as measured=: "
                         f"{STRATEGY_LABELS.get(self.measured_winner, self.measured_winner)} ({same}; "
                         "at that run's scale, which may be far below this dataset's)")
        return "\n".join(lines)


@dataclass(frozen=True)
class QuadrantEvidence:
    """What the reference run measured in one quadrant, with the scale it was measured at.

    ``outcome`` is "textbook", "tie" or "other" (:func:`tlcourse.experiments.decision_matrix.textbook_verdict`),
    ``verdict`` the generated sentence with its interval, ``winner`` the highest mean. ``quoted``
    holds the findings (:mod:`tlcourse.experiments.findings`) the advisor quotes for the quadrant: what to do
    there, and the pretrained layers' learning rate.
    """

    quadrant: str
    winner: str
    outcome: str
    verdict: str
    scale: str
    source: str
    quoted: tuple[findings.Finding, ...] = ()

    def __str__(self) -> str:
        return f"{quadrant_title(self.quadrant)} ({self.scale}): {self.verdict}"


def reference_path() -> Path:
    """Where the committed reference run lives (package data: :func:`tlcourse.experiments.results_file`)."""
    return results_file(REFERENCE_RESULTS)


def reference_evidence(path: str | os.PathLike[str] | None = None) -> dict[str, QuadrantEvidence]:
    """``{quadrant: QuadrantEvidence}`` from the committed reference run (:data:`REFERENCE_RESULTS`).

    This is the only source the advisor quotes as "measured": a laptop-scale run in a notebook
    is a lesson, not evidence about a 1000-images-per-class dataset. Quadrants the file does not
    hold yet (an unfinished run) are left out; a missing file raises FileNotFoundError.
    """
    path = reference_path() if path is None else path
    doc = decision_matrix.load_results(path)
    meta, rows = doc.get("meta", {}), doc["rows"]
    source = "decision-matrix reference run"
    found = {f.id: f for f in [*findings.matrix_findings(doc, source), *findings.sources_findings(doc, source),
                               *findings.lr_findings(doc, source)]}
    out = {}
    for quadrant, table in decision_matrix.summarize(rows).items():
        first = next(r for r in rows if r["quadrant"] == quadrant)
        seeds = max(m["n"] for m in table.values())
        outcome, sentence = decision_matrix.textbook_verdict(quadrant, table)
        scale = (f"reference run: {first.get('dataset', '?')}, {first.get('n_per_class', '?')} images/class, "
                 f"{seeds} seed{'s' if seeds != 1 else ''}, {meta.get('backbone', '?')} at {meta.get('size', '?')} px, "
                 f"early stopping, test n={first.get('n_test', '?')}")
        quoted = tuple(found[i] for i in (f"matrix.{quadrant}", f"sources.{quadrant}", "lr.backbone") if i in found)
        out[quadrant] = QuadrantEvidence(quadrant, decision_matrix.winners({quadrant: table})[quadrant], outcome,
                                         sentence, scale, str(path), quoted)
    return out


def recommend(n_per_class: float, similarity: float, *, size_boundary: float = SIZE_BOUNDARY,
              similarity_boundary: float = SIMILARITY_BOUNDARY,
              measured: Mapping[str, str] | None = None,
              evidence: Mapping[str, QuadrantEvidence] | None = None) -> Recommendation:
    """The strategy for ``n_per_class`` images per class at ``similarity`` (0..1).

    Without ``evidence`` it is the textbook's. ``evidence`` (:func:`reference_evidence`) adds what
    the reference run measured in the quadrant, with its scale, and its finding's choice wins
    where it names one (the textbook's choice, or the cheaper of two that tie within noise).
    ``measured`` maps a quadrant to the highest mean of some other run; it is reported with a
    warning that its scale may not match (prefer ``evidence``).
    The boundaries are rules of thumb, not laws: near them, try both neighbours' strategies.
    """
    quadrant = quadrant_of(n_per_class, similarity, size_boundary=size_boundary,
                           similarity_boundary=similarity_boundary)
    advice, found = TEXTBOOK[quadrant], (evidence or {}).get(quadrant)
    # The reference run's finding for the quadrant decides where it names a strategy; the textbook's
    # other choices stay as alternatives. Without evidence, the textbook alone speaks.
    finding = next((f for f in found.quoted if f.id == f"matrix.{quadrant}"), None) if found else None
    strategy = (finding.choice if finding else None) or advice.choice
    why = advice.why
    if strategy in advice.strategies[1:]:
        why += f" Of the textbook's choices, the reference run found {STRATEGY_LABELS[strategy]} enough here (finding below)."
    elif strategy != advice.choice:
        how = "better" if finding is not None and finding.measurable else "as good within noise, and cheaper"
        why += f" The reference run found {STRATEGY_LABELS[strategy]} {how} here (finding below)."
    return Recommendation(strategy=strategy, quadrant=quadrant, explanation=why,
                          n_per_class=float(n_per_class), similarity=float(similarity),
                          alternatives=tuple(s for s in advice.strategies if s != strategy),
                          measured_winner=(measured or {}).get(quadrant), evidence=found)


# --------------------------------------------------------------------------------------------
# similarity_score
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimilarityScore:
    """How ImageNet-like a dataset looks to a pretrained backbone."""

    score: float  # 2 ** (-distance / DISTANCE_AT_HALF), in (0, 1]
    distance: float  # mean over BatchNorm layers of log(1 + normalised W2 distance)
    n_images: int
    per_layer: list[float] = field(default_factory=list, repr=False)
    confidence: float = float("nan")  # mean max-softmax of the ImageNet head, for comparison


def calibrate_distance(similar: Sequence[float], dissimilar: Sequence[float]) -> float:
    """The ``distance_at_half`` that puts the boundary midway between two sets of distances.

    ``similar`` are the distances of datasets that count as similar (photos), ``dissimilar`` of
    those that do not (scans): the midpoint between the farthest similar and the nearest dissimilar
    one. Raises ValueError when they overlap, since then no boundary separates them.
    """
    if not similar or not dissimilar:
        raise ValueError("calibrate_distance needs at least one similar and one dissimilar distance")
    if max(similar) >= min(dissimilar):
        raise ValueError(f"the distances overlap (similar up to {max(similar):.3f}, dissimilar from "
                         f"{min(dissimilar):.3f}): no single boundary separates them")
    return (max(similar) + min(dissimilar)) / 2


def distance_to_score(distance: float, distance_at_half: float = DISTANCE_AT_HALF) -> float:
    """Map a BatchNorm-statistics distance (>= 0) to a similarity in (0, 1]; 0.5 at ``distance_at_half``."""
    return float(2.0 ** (-max(distance, 0.0) / distance_at_half))


def _score_transform(model: nn.Module, size: int) -> Callable[[Any], torch.Tensor]:
    pre = backbone_spec(model).preprocessing()
    return type(pre)(resize=size, crop=size, mean=pre.mean, std=pre.std, interpolation=pre.interpolation).eval_transform()


class _Mapped(Dataset):
    def __init__(self, dataset: Dataset, make_transform: Callable[[], Callable[[Any], torch.Tensor]]) -> None:
        self.dataset, self.make_transform = dataset, make_transform
        self.transform: Callable[[Any], torch.Tensor] | None = None  # built at the first PIL image

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.dataset[i]
        if isinstance(x, torch.Tensor):
            return x, y
        if self.transform is None:
            self.transform = self.make_transform()
        return self.transform(x), y


def _channel_moments(x: torch.Tensor) -> torch.Tensor:
    """Per-channel ``[sum, sum of squares, count]`` (3, C) of a BatchNorm layer's input."""
    x = x.double()
    dims = [0, *range(2, x.dim())]
    total = x.sum(dims)
    return torch.stack([total, (x * x).sum(dims), torch.full_like(total, x.numel() // x.shape[1])])


def similarity_score(model: nn.Module | str, dataset: Dataset, *, max_images: int = 200, size: int = SCORE_SIZE,
                     seed: int = 0, batch_size: int = 50, distance_at_half: float = DISTANCE_AT_HALF) -> SimilarityScore:
    """Score ``dataset`` (items ``(PIL image or tensor, label)``) against the backbone's pretraining data.

    At most ``max_images`` random images are used. PIL images get the backbone's normalisation at
    ``size`` px (square resize, the size the default calibration used); tensors are used as given.
    For each BatchNorm layer, the dataset's per-channel mean and standard deviation of the layer's
    input are compared with the stored running statistics: ``((mu - mu_IN)^2 + (sd - sd_IN)^2) /
    var_IN``, averaged over channels, then ``log1p`` and averaged over layers.
    """
    if isinstance(model, str):
        model = build_backbone(model)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("similarity_score needs at least one image")
    if n > max_images:
        order = np.random.default_rng(seed).permutation(n)[:max_images]
        dataset = Subset(dataset, sorted(int(i) for i in order))
    data = _Mapped(dataset, lambda: _score_transform(model, size))
    bns = {name: m for name, m in model.named_modules()
           if isinstance(m, _BatchNorm) and m.running_mean is not None}
    if not bns:
        raise ValueError("similarity_score needs a backbone with BatchNorm running statistics")
    sums: dict[str, list[torch.Tensor]] = {name: [] for name in bns}
    was_training = model.training
    model.eval()
    confidences = []
    try:
        with torch.inference_mode(), capture(model, bns, inputs=True, pool=_channel_moments) as moments:
            for x, _ in DataLoader(data, batch_size=batch_size):
                out = model(x)
                for name in bns:
                    sums[name].append(moments.outputs[name])
                if out.dim() == 2 and out.shape[1] > 1:
                    confidences.append(out.softmax(1).max(1).values)
    finally:
        model.train(was_training)
    per_layer = []
    for name, m in bns.items():
        total = torch.stack(sums[name]).sum(0)
        mean = total[0] / total[2]
        var = (total[1] / total[2] - mean * mean).clamp_min(0)
        rm, rv = m.running_mean.double(), m.running_var.double()
        w2 = ((mean - rm) ** 2 + (var.sqrt() - rv.sqrt()) ** 2) / (rv + 1e-5)
        per_layer.append(float(torch.log1p(w2.mean())))
    distance = float(np.mean(per_layer))
    conf = float(torch.cat(confidences).mean()) if confidences else float("nan")
    return SimilarityScore(score=distance_to_score(distance, distance_at_half), distance=distance,
                           n_images=len(data), per_layer=per_layer, confidence=conf)


# --------------------------------------------------------------------------------------------
# advise_folder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderAdvice:
    """What :func:`advise_folder` found in a folder and what it recommends."""

    recommendation: Recommendation
    counts: dict[str, int]
    n_per_class: int  # the smallest class: the one that limits what can be learned
    similarity: float
    skipped: int  # files that are not usable images

    def __str__(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
        skipped = f" ({self.skipped} unusable files skipped)" if self.skipped else ""
        return f"classes: {counts}{skipped}\n{self.recommendation}"


def advise_folder(path: str | os.PathLike[str], *, model: nn.Module | str = DEFAULT_BACKBONE,
                  scorer: Callable[[Dataset], float] | None = None, max_images: int = 200, seed: int = 0,
                  measured: Mapping[str, str] | None = None,
                  evidence: Mapping[str, QuadrantEvidence] | None = None, **boundaries: float) -> FolderAdvice:
    """Count the images per class in ``path/<class>/<image>``, score the similarity, recommend.

    The size used is the **smallest** class's count: a classifier is only as good as its rarest
    class. ``scorer(dataset) -> float in [0, 1]`` replaces :func:`similarity_score` (tests use a
    fake; you might use another backbone's calibrated score). ``boundaries``, ``measured`` and
    ``evidence`` go to :func:`recommend`.
    """
    dataset = folder_dataset(path, warn=False)
    counts = dataset.scan.counts()
    used = {k: v for k, v in counts.items() if v > 0}
    n_per_class = min(used.values())
    if scorer is None:
        similarity = similarity_score(model, dataset, max_images=max_images, seed=seed).score
    else:
        similarity = float(scorer(dataset))
    rec = recommend(n_per_class, similarity, measured=measured, evidence=evidence, **boundaries)
    return FolderAdvice(recommendation=rec, counts=counts, n_per_class=n_per_class, similarity=similarity,
                        skipped=len(dataset.scan.bad))


# --------------------------------------------------------------------------------------------
# The matrix figure and the widget panel
# --------------------------------------------------------------------------------------------

_N_RANGE = (5, 20000)


def matrix_figure(highlight: str | None = None, *, point: tuple[float, float] | None = None,
                  datasets: Mapping[str, tuple[float, float]] | None = None,
                  measured: Mapping[str, str] | None = None, size_boundary: float = SIZE_BOUNDARY,
                  similarity_boundary: float = SIMILARITY_BOUNDARY,
                  evidence: Mapping[str, QuadrantEvidence] | None = None) -> Figure:
    """The decision matrix: images per class (log scale) x similarity, textbook advice per quadrant.

    ``highlight`` outlines one quadrant; ``point`` = ``(n_per_class, similarity)`` marks a dataset
    with a star; ``datasets`` marks several with labelled dots; ``evidence`` adds each quadrant's
    reference-run outcome under the advice (``measured``: another run's highest mean).
    """
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    lo, hi = _N_RANGE
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 1)
    boxes = {
        "small_similar": (lo, similarity_boundary, size_boundary - lo, 1 - similarity_boundary),
        "large_similar": (size_boundary, similarity_boundary, hi - size_boundary, 1 - similarity_boundary),
        "small_dissimilar": (lo, 0, size_boundary - lo, similarity_boundary),
        "large_dissimilar": (size_boundary, 0, hi - size_boundary, similarity_boundary),
    }
    for quadrant, (x, y, w, h) in boxes.items():
        on = quadrant == highlight
        ax.add_patch(Rectangle((x, y), w, h, facecolor="tab:orange" if on else "0.93", alpha=0.35 if on else 1,
                               edgecolor="tab:red" if on else "white", lw=3 if on else 1, zorder=0))
        cx = math.sqrt(x * (x + w))
        text = f"{quadrant_title(quadrant)}\n" + _articles_line(quadrant)
        if evidence and quadrant in evidence:
            text += "\nmeasured: " + _measured_line(evidence[quadrant])
        elif measured and quadrant in measured:
            text += f"\nmeasured: {STRATEGY_LABELS.get(measured[quadrant], measured[quadrant])}"
        # Similar quadrants: text at the top; dissimilar ones: at the bottom, away from the datasets'
        # dots, which sit near the boundary on either side of it.
        top = y >= similarity_boundary
        ax.text(cx, y + h - 0.03 if top else y + 0.03, text, ha="center", va="top" if top else "bottom",
                fontsize=8, fontweight="bold" if on else "normal")
    for name, (n, s) in (datasets or {}).items():
        ax.plot([n], [s], "o", color="tab:blue", ms=5)
        ax.annotate(name, (n, s), textcoords="offset points", xytext=(4, -10), fontsize=7, color="tab:blue")
    if point is not None:
        ax.plot([min(max(point[0], lo), hi)], [point[1]], "*", color="tab:red", ms=16, zorder=5)
    ax.axvline(size_boundary, color="k", lw=1)
    ax.axhline(similarity_boundary, color="k", lw=1)
    ax.set_xlabel("training images per class (log scale)")
    ax.set_ylabel("similarity to ImageNet (BatchNorm-statistics score)")
    ax.set_title("The size x similarity decision matrix")
    fig.tight_layout()
    return fig


_short = {"probe_last": "probe, last layer", "probe_early": "probe, earlier layer", "partial_ft": "top-stage FT",
          "full_ft": "full FT", "scratch": "scratch"}.get


def _articles_line(quadrant: str) -> str:
    """What the two matrix articles advise in ``quadrant``: both choices where they disagree."""
    picks = findings.ARTICLES.get(quadrant)
    return (f"000: {_short(picks['000'])}; 001: {_short(picks['001'])}" if picks
            else f"articles: {_short(TEXTBOOK[quadrant].choice)}")


def _measured_line(e: QuadrantEvidence) -> str:
    """The reference run's answer in a quadrant, from its findings: a tie shows both strategies."""
    parts = []
    for f in e.quoted:
        if f.id.startswith(("matrix.", "sources.")) and len(f.compared) == 2:
            a, b = f.compared if not f.measurable or (f.effect or 0) > 0 else f.compared[::-1]
            parts.append(f"{_short(a)} {'>' if f.measurable else '='} {_short(b)}")
    tie = "\n(= : within noise)" if any(" = " in p for p in parts) else ""
    return "\n".join(parts) + tie if parts else e.outcome


def advisor_panel(datasets: Mapping[str, tuple[float, float]], *, measured: Mapping[str, str] | None = None,
                  initial: tuple[float, float] = (100, 0.5),
                  evidence: Mapping[str, QuadrantEvidence] | None = None) -> Any:
    """An ipywidgets panel: a log slider for images/class, a similarity slider and a dataset dropdown.

    Choosing a dataset moves the sliders to its measured position; every change redraws the matrix
    with the quadrant highlighted and prints the recommendation. Returns the ``VBox``; in front
    ends without widgets, show :func:`recommend` and :func:`matrix_figure` statically as well.
    """
    import ipywidgets as widgets
    from IPython.display import Image

    n_slider = widgets.FloatLogSlider(value=initial[0], base=10, min=math.log10(_N_RANGE[0]),
                                      max=math.log10(_N_RANGE[1]), step=0.05, description="images/class",
                                      readout_format=".0f", continuous_update=False)
    s_slider = widgets.FloatSlider(value=initial[1], min=0.0, max=1.0, step=0.01, description="similarity",
                                   continuous_update=False)
    choice = widgets.Dropdown(options=["(your own)"] + list(datasets), value="(your own)", description="dataset")
    out = widgets.Output()

    def redraw(*_: Any) -> None:
        # The Output widget's contents are set directly (outputs = (), append_*), never through
        # `with out:` / clear_output(wait=True). Those route the kernel's output messages into the
        # widget by message id, and a headless client (papermill, nbval, nbconvert) can wait
        # forever on such a cell: seen here once under load, and jupyter/nbclient#312.
        rec = recommend(round(n_slider.value), s_slider.value, measured=measured, evidence=evidence)
        fig = matrix_figure(rec.quadrant, point=(n_slider.value, s_slider.value), datasets=datasets,
                            measured=measured, evidence=evidence)
        png = io.BytesIO()
        fig.savefig(png, format="png", bbox_inches="tight")
        out.outputs = ()
        out.append_stdout(f"{rec}\n")
        out.append_display_data(Image(data=png.getvalue(), format="png"))

    def pick(change: Mapping[str, Any]) -> None:
        if change["new"] in datasets:
            n, s = datasets[change["new"]]
            n_slider.value, s_slider.value = n, s

    choice.observe(pick, names="value")
    n_slider.observe(redraw, names="value")
    s_slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([choice, n_slider, s_slider]), out])
