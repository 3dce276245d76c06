"""The size x similarity decision matrix as data: quadrants, reuse strategies, textbook advice.

One table, shared by the advisor (what to recommend) and the decision-matrix experiment (what the
measurement is compared with), so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "QUADRANTS",
    "SIMILARITY_BOUNDARY",
    "SIZE_BOUNDARY",
    "STRATEGIES",
    "STRATEGY_LABELS",
    "TEXTBOOK",
    "TRAINED",
    "Advice",
    "agrees_with_textbook",
    "quadrant_of",
    "quadrant_title",
]

#: Fewer images per class than this counts as "small": a rule of thumb that tutorials repeat (cs231n's
#: transfer-learning notes, where the matrix comes from, give no number).
SIZE_BOUNDARY = 1000
#: Similarity scores at or above this count as "similar" to the pretraining data.
SIMILARITY_BOUNDARY = 0.5

#: Quadrant keys, in the order of the 2x2 panel: top row similar, left column small.
QUADRANTS = ("small_similar", "large_similar", "small_dissimilar", "large_dissimilar")
STRATEGIES = ("probe_last", "probe_early", "partial_ft", "full_ft", "scratch")
STRATEGY_LABELS: Mapping[str, str] = {
    "probe_last": "linear probe, last layer",
    "probe_early": "linear probe, earlier stage",
    "partial_ft": "partial fine-tune (top stages)",
    "full_ft": "full fine-tune",
    "scratch": "from scratch (baseline)",
}
#: The strategies that train network weights (the probes train only a linear classifier).
TRAINED = ("partial_ft", "full_ft", "scratch")


@dataclass(frozen=True)
class Advice:
    """The textbook's advice for one quadrant (the four-quadrant matrix of source articles 000 and 001).

    Attributes:
        strategies: the strategies it recommends, its first choice first.
        why: the reason, in a few sentences.
    """

    strategies: tuple[str, ...]
    why: str

    @property
    def choice(self) -> str:
        """The textbook's first choice."""
        return self.strategies[0]


TEXTBOOK: Mapping[str, Advice] = {
    "small_similar": Advice(
        ("probe_last",),
        "Little data, familiar images: the pretrained top-layer features already describe them. "
        "Freeze the backbone and train a linear classifier on its last features; training more "
        "weights than that mostly overfits."),
    "large_similar": Advice(
        ("full_ft", "partial_ft"),
        "Plenty of data, familiar images: there is enough data to adapt the network without "
        "overfitting. Fine-tune the whole network (or its top stages) from the pretrained weights."),
    "small_dissimilar": Advice(
        ("probe_early", "partial_ft"),
        "Little data, unfamiliar images: the deepest features are specific to ImageNet's objects, "
        "and there is too little data to retrain them. Use a classifier on earlier-layer features, "
        "or a careful partial fine-tune with augmentation."),
    "large_dissimilar": Advice(
        ("full_ft",),
        "Plenty of data, unfamiliar images: retrain the whole network, but start from the "
        "pretrained weights (the textbook's reason: they converge faster than random ones; the "
        "course's reference run compares them with training from scratch in notebook 04)."),
}


def quadrant_of(n_per_class: float, similarity: float, *, size_boundary: float = SIZE_BOUNDARY,
                similarity_boundary: float = SIMILARITY_BOUNDARY) -> str:
    """``"small_similar"`` etc. ``n_per_class >= size_boundary`` is large; ``similarity >=
    similarity_boundary`` is similar (both boundaries belong to the upper side)."""
    if not (isinstance(n_per_class, (int, float, np.integer, np.floating)) and n_per_class > 0):
        raise ValueError(f"n_per_class must be a positive number of images per class, got {n_per_class!r}")
    if not (isinstance(similarity, (int, float, np.integer, np.floating)) and 0.0 <= similarity <= 1.0):
        raise ValueError(f"similarity must lie in [0, 1] (see similarity_score), got {similarity!r}")
    size = "large" if n_per_class >= size_boundary else "small"
    sim = "similar" if similarity >= similarity_boundary else "dissimilar"
    return f"{size}_{sim}"


def quadrant_title(quadrant: str) -> str:
    """``"small_similar"`` -> ``"small & similar"``."""
    size, sim = quadrant.split("_")
    return f"{size} & {sim}"


def agrees_with_textbook(quadrant: str, strategy: str) -> bool:
    """Whether ``strategy`` is one the textbook recommends for ``quadrant``."""
    return strategy in TEXTBOOK[quadrant].strategies
