"""The dataset size x similarity decision matrix, measured: five ways to reuse a backbone, compared.

Every transfer-learning tutorial recites a 2x2 matrix (small or large dataset, similar to the
pretraining data or not) with one piece of advice per quadrant. This module runs the strategies
the advice chooses between, so notebook 04 can check the advice on real data:

==============  =============================================================================
strategy        what trains
==============  =============================================================================
probe_last      a logistic regression on the final pooled features (backbone frozen)
probe_early     a logistic regression on an earlier stage's pooled features (backbone frozen)
partial_ft      the deepest few stages + a new head, at a low backbone learning rate
full_ft         the whole pretrained network + a new head, at a low backbone learning rate
scratch         the same architecture from random weights (the baseline: what pretraining buys)
==============  =============================================================================

The probes use cached features (:mod:`tlcourse.features`); the three training strategies use
images decoded once into tensors (:class:`tlcourse.finetune.TensorImages`). Results are plain rows
(``quadrant, strategy, seed, accuracy, ...``) saved as JSON and CSV, so :func:`plot_matrix` can
redraw the figure without training anything.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader

from tlcourse import features, models
from tlcourse.finetune import TensorImages
from tlcourse.train import seed_everything, train_loop

__all__ = [
    "QUADRANTS",
    "STRATEGIES",
    "STRATEGY_LABELS",
    "TEXTBOOK",
    "load_results",
    "plot_matrix",
    "predict",
    "probe_accuracy",
    "save_results",
    "summarize",
    "train_strategy",
    "winners",
]

#: Quadrant keys, in the order of the 2x2 panel: top row similar, left column small.
QUADRANTS = ("small_similar", "large_similar", "small_dissimilar", "large_dissimilar")
STRATEGIES = ("probe_last", "probe_early", "partial_ft", "full_ft", "scratch")
STRATEGY_LABELS = {
    "probe_last": "linear probe, last layer",
    "probe_early": "linear probe, earlier stage",
    "partial_ft": "partial fine-tune (top stages)",
    "full_ft": "full fine-tune",
    "scratch": "from scratch (baseline)",
}
#: The textbook advice per quadrant (cs231n, Chollet, and most tutorials since): the strategies
#: it recommends. The measured winner is compared with these.
TEXTBOOK: dict[str, tuple[str, ...]] = {
    "small_similar": ("probe_last",),
    "large_similar": ("partial_ft", "full_ft"),
    "small_dissimilar": ("probe_early", "partial_ft"),
    "large_dissimilar": ("full_ft",),
}
TRAINED = ("partial_ft", "full_ft", "scratch")


def quadrant_title(quadrant: str) -> str:
    size, sim = quadrant.split("_")
    return f"{size} & {sim}"


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   *, C: float = 0.5, seed: int = 0) -> float:
    """Test accuracy of a standardised logistic regression trained on cached features."""
    return features.fit_logistic_regression(train_x, train_y, test_x, test_y, C=C, seed=seed)["accuracy"]


def build_for_strategy(strategy: str, num_classes: int, *, backbone: str = models.DEFAULT_BACKBONE,
                       partial_stages: int = 3) -> nn.Module:
    """The model a training strategy starts from, with the right parameters trainable.

    ``partial_ft`` unfreezes the deepest ``partial_stages`` stages (and the head); ``full_ft``
    and ``scratch`` train everything. ``scratch`` has random weights.
    """
    if strategy not in TRAINED:
        raise ValueError(f"{strategy!r} does not train a network; trained strategies: {TRAINED}")
    model = models.build_backbone(backbone, num_classes, pretrained=strategy != "scratch")
    if strategy == "partial_ft":
        models.freeze_backbone(model)
        models.unfreeze(model, partial_stages)
    return model


def train_strategy(
    strategy: str,
    train_set: TensorImages,
    test_set: TensorImages,
    *,
    epochs: int,
    backbone: str = models.DEFAULT_BACKBONE,
    head_lr: float = 1e-3,
    backbone_lr: float = 1e-4,
    scratch_lr: float = 1e-3,
    partial_stages: int = 3,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train one of ``partial_ft``, ``full_ft``, ``scratch`` and return its test accuracy.

    Adam, with the pretrained layers at ``backbone_lr`` (10x below the new head's ``head_lr``:
    large updates would overwrite the features that make pretraining worth having). ``scratch``
    has nothing to preserve and trains every weight at ``scratch_lr``. Frozen BatchNorm layers
    stay in eval mode (``tlcourse.train.set_train_mode``). Returns ``{"accuracy", "train_accuracy",
    "seconds", "trainable"}``.
    """
    seed_everything(seed)
    n_classes = len(set(train_set.targets))
    model = build_for_strategy(strategy, n_classes, backbone=backbone, partial_stages=partial_stages)
    device = torch.device(device)
    model.to(device)
    if strategy == "scratch":
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": scratch_lr}]
    else:
        groups = models.param_groups(model, backbone_lr=backbone_lr, head_lr=head_lr)
    optimizer = torch.optim.Adam(groups)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    stats = None
    for _ in range(epochs):
        stats = train_loop(model, loader, loss_fn, optimizer, device, progress=False)
    predictions = predict(model, test_set, device=device)
    targets = torch.as_tensor(test_set.targets)
    return {"accuracy": float((predictions == targets).float().mean()),
            "train_accuracy": stats.accuracy if stats else float("nan"),
            # A network that outputs one class for every image scores exactly the class share:
            # this says when an accuracy of 50% means "collapsed" rather than "learned a little".
            "majority_prediction_share": float(torch.bincount(predictions).max()) / len(predictions),
            "seconds": time.perf_counter() - start, "trainable": models.count_parameters(model)}


def predict(model: nn.Module, dataset: TensorImages, *, device: str | torch.device = "cpu",
            batch_size: int = 128) -> torch.Tensor:
    """Top-1 predictions (N,) of ``model`` in eval mode on every item of ``dataset``, in order."""
    model.eval()
    out = []
    with torch.inference_mode():
        for x, _ in DataLoader(dataset, batch_size=batch_size):
            out.append(model(x.to(device)).argmax(1).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Results: rows -> summary -> winners, saved and loaded
# --------------------------------------------------------------------------------------------


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{quadrant: {strategy: {"mean", "std", "n", "values"}}}`` over seeds.

    ``std`` is the population standard deviation over seeds (0 for a single seed).
    """
    grouped: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        grouped.setdefault(row["quadrant"], {}).setdefault(row["strategy"], []).append(float(row["accuracy"]))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for quadrant in [q for q in QUADRANTS if q in grouped] + [q for q in grouped if q not in QUADRANTS]:
        out[quadrant] = {}
        by_strategy = grouped[quadrant]
        for strategy in [s for s in STRATEGIES if s in by_strategy] + [s for s in by_strategy if s not in STRATEGIES]:
            values = by_strategy[strategy]
            out[quadrant][strategy] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                       "n": len(values), "values": values}
    return out


def winners(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, str]:
    """The strategy with the highest mean accuracy in each quadrant (first in STRATEGIES order on a tie)."""
    return {q: max(table, key=lambda s: (table[s]["mean"], -STRATEGIES.index(s) if s in STRATEGIES else 0))
            for q, table in summary.items()}


def agrees_with_textbook(quadrant: str, strategy: str) -> bool:
    return strategy in TEXTBOOK.get(quadrant, ())


def verdict(quadrant: str, table: Mapping[str, Mapping[str, Any]]) -> str:
    """How the measured winner compares with the textbook's best strategy in one quadrant.

    A lead smaller than the largest seed spread (std) of the two is called a tie: one seed more
    could reverse it. With a single seed there is no spread, and any lead counts.
    """
    winner = max(table, key=lambda s: table[s]["mean"])
    if agrees_with_textbook(quadrant, winner):
        return "winner agrees with the textbook (★)"
    candidates = [s for s in TEXTBOOK.get(quadrant, ()) if s in table]
    if not candidates:
        return "textbook strategy not measured"
    textbook = max(candidates, key=lambda s: table[s]["mean"])
    lead = table[winner]["mean"] - table[textbook]["mean"]
    spread = max(table[winner]["std"], table[textbook]["std"])
    if lead <= spread:
        return f"textbook (★) ties with the winner (lead {lead:.1%} ≤ spread {spread:.1%})"
    return f"winner beats the textbook (★) by {lead:.1%}"


_CSV_FIELDS = ("quadrant", "domain", "dataset", "n_per_class", "strategy", "seed", "accuracy", "seconds")


def save_results(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                 meta: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``path`` (JSON: ``{"meta", "rows"}``) and the same rows as CSV next to it.

    Both files are replaced atomically. Returns ``(json_path, csv_path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": dict(meta or {}), "rows": [dict(r) for r in rows]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    os.replace(tmp, path)
    csv_path = path.with_suffix(".csv")
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    return path, csv_path


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"meta": ..., "rows": [...]}`` as written by :func:`save_results`."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise ValueError(f"{path} is not a decision-matrix results file (no 'rows' list)")
    return doc


# --------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------

WIN_COLOR = "tab:orange"
BAR_COLOR = "tab:blue"
SCRATCH_COLOR = "0.6"


def plot_matrix(results: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """The 2x2 panel: per quadrant, every strategy's accuracy (mean, seeds as dots, +-1 std).

    ``results`` is what :func:`load_results` returns (or just its rows). The measured winner is
    orange; the strategies the textbook recommends for that quadrant are marked with a star.
    Small datasets are on the left, similar ones on top, as the matrix is usually drawn.
    """
    rows = results["rows"] if isinstance(results, Mapping) else list(results)
    meta = results.get("meta", {}) if isinstance(results, Mapping) else {}
    summary = summarize(rows)
    best = winners(summary)
    info = {}
    for row in rows:
        info.setdefault(row["quadrant"], (row.get("dataset", ""), row.get("n_per_class", "")))
    fig = Figure(figsize=(11, 6.4))
    axes = fig.subplots(2, 2, sharex=True)
    for ax, quadrant in zip(axes.flat, QUADRANTS):
        table = summary.get(quadrant)
        if not table:
            ax.set_axis_off()
            ax.set_title(f"{quadrant_title(quadrant)}: not measured")
            continue
        names = list(table)
        y = np.arange(len(names))[::-1]
        means = np.array([table[s]["mean"] for s in names])
        stds = np.array([table[s]["std"] for s in names])
        colors = [WIN_COLOR if s == best[quadrant] else SCRATCH_COLOR if s == "scratch" else BAR_COLOR for s in names]
        ax.barh(y, means, xerr=stds, color=colors, alpha=0.85, capsize=3)
        for yi, s in zip(y, names):
            vals = table[s]["values"]
            ax.plot(vals, [yi] * len(vals), "k.", ms=4)
            ax.text(0.01, yi, f"{table[s]['mean']:.0%}", va="center", ha="left", color="white", fontsize=8,
                    fontweight="bold")
        labels = [("★ " if agrees_with_textbook(quadrant, s) else "") + STRATEGY_LABELS.get(s, s) for s in names]
        ax.set_yticks(y, labels, fontsize=8)
        dataset, n = info[quadrant]
        ax.set_title(f"{quadrant_title(quadrant)}: {dataset}, {n}/class\n{verdict(quadrant, table)}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.axvline(0.5, color="0.8", lw=0.8, ls=":")
    for ax in axes[1]:
        ax.set_xlabel("test accuracy")
    seeds = meta.get("seeds")
    fig.suptitle(title or f"The decision matrix, measured ({meta.get('backbone', '')}, "
                 f"{meta.get('size', '?')} px{', seeds: ' + str(seeds) if seeds else ''}); orange = winner",
                 fontsize=10)
    fig.tight_layout()
    return fig


def format_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The summary as a fixed-width text table: quadrant rows, strategy columns, mean ± std."""
    head = f"{'quadrant':<18}" + "".join(f"{s:>16}" for s in STRATEGIES)
    lines = [head]
    for quadrant, table in summary.items():
        cells = []
        for s in STRATEGIES:
            if s in table:
                cells.append(f"{table[s]['mean']:.1%} ± {table[s]['std']:.1%}".rjust(16))
            else:
                cells.append("-".rjust(16))
        lines.append(f"{quadrant:<18}" + "".join(cells))
    return "\n".join(lines)

