"""Feature extraction: run a frozen backbone once, keep its features, train small models on them.

When the backbone is frozen, its output for a given image never changes. Running it in every
epoch (what many tutorials do) recomputes the same numbers again and again. This package does
it once:

- :mod:`~tlcourse.features.extract`: :func:`extract_activations`, the one frozen-backbone pass
  (engine or eager, on the device it is given; pooled vectors or whole stage maps, with mirror
  images on request), stopping after the deepest stage asked for; :func:`extract_features` /
  :func:`extract_stage_features` are its one-vector-per-image-and-layer forms;
- :mod:`~tlcourse.features.engine`: :class:`EngineSettings` (how that pass runs: made by
  :func:`engine_settings`); on a CPU it runs on ONNX Runtime, exported once per backbone weights,
  layers and input size into ``build/onnx``;
- :mod:`~tlcourse.features.cache`: :func:`cached_features` keeps them on disk under a key of
  everything they depend on (weights, preprocessing, layer, the images themselves), and
  :func:`~tlcourse.features.activations.cached_activations` keeps a whole pass (maps, mirror images) as memory-mapped files;
- :mod:`~tlcourse.features.probes`: :func:`train_linear_probe` (the course's training loop),
  :func:`fit_logistic_regression`, :func:`probe_accuracy_cv` and :func:`nearest_neighbours`.
"""

from tlcourse.features.activations import (
    ACTIVATIONS_FORMAT,
    ActivationSet,
    ArrayRows,
    activation_key,
    cached_activations,
    load_activations,
)
from tlcourse.features.cache import (
    CACHE_FORMAT,
    FeatureSet,
    backbone_fingerprint,
    cache_key,
    cached_features,
    cached_stage_features,
    dataset_fingerprint,
)
from tlcourse.features.engine import EngineSettings, EngineUnavailable, OnnxFeatures, engine_settings, onnx_path
from tlcourse.features.extract import (
    POOLED,
    Activations,
    Extraction,
    ExtractionReport,
    extract_activations,
    extract_features,
    extract_stage_features,
)
from tlcourse.features.neighbours import *  # noqa: F403  (near_duplicates, duplicate_groups, keep_one_per_group)
from tlcourse.features.probes import (
    fit_logistic_regression,
    nearest_neighbours,
    probe_accuracy_cv,
    train_linear_probe,
)

__all__ = [
    "ACTIVATIONS_FORMAT",
    "CACHE_FORMAT",
    "POOLED",
    "ActivationSet",
    "Activations",
    "ArrayRows",
    "EngineSettings",
    "EngineUnavailable",
    "Extraction",
    "ExtractionReport",
    "FeatureSet",
    "OnnxFeatures",
    "activation_key",
    "backbone_fingerprint",
    "cache_key",
    "cached_activations",
    "cached_features",
    "cached_stage_features",
    "dataset_fingerprint",
    "engine_settings",
    "extract_activations",
    "extract_features",
    "extract_stage_features",
    "fit_logistic_regression",
    "load_activations",
    "nearest_neighbours",
    "onnx_path",
    "probe_accuracy_cv",
    "train_linear_probe",
]
