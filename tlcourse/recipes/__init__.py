"""The recipes the course's experiments share, each written once.

- :mod:`~tlcourse.recipes.core`: the one training loop every recipe runs (:func:`train`: ``fit``
  with :class:`~tlcourse.train.EarlyStopping` and :class:`~tlcourse.train.KeepBest`, on whatever
  device it is given, then one scoring pass on held-out data), its result (:class:`RecipeResult`)
  and the linear probe on cached features (:func:`linear_probe`);
- :mod:`~tlcourse.recipes.fine_tuning`: the named strategies on top of it: :func:`top_stage_fine_tune`,
  :func:`partial_fine_tune`, :func:`full_fine_tune`, :func:`from_scratch`, :func:`gradual_unfreezing`,
  and comparisons that never score a collapsed run (:func:`compare_seeds`, :func:`compare_paired`).

What differs between strategies is only what trains (the module and its parameter groups, with
their learning rates), the BatchNorm policy and, for gradual unfreezing, the schedule; those are
arguments, never side effects of another choice. Read one from a notebook with ``recipes.train??``.
"""

from tlcourse.features import fit_logistic_regression
from tlcourse.recipes.core import (
    PROBE_CS,
    Data,
    RecipeResult,
    TensorBatches,
    as_batches,
    labels_of,
    linear_probe,
    probabilities,
    train,
)
from tlcourse.recipes.fine_tuning import (
    TopStages,
    compare_paired,
    compare_seeds,
    from_scratch,
    full_fine_tune,
    gradual_unfreezing,
    partial_fine_tune,
    scored,
    top_stage_fine_tune,
    top_stages,
)

__all__ = [
    "PROBE_CS", "Data", "RecipeResult", "TensorBatches", "TopStages", "as_batches", "compare_paired", "compare_seeds",
    "fit_logistic_regression", "from_scratch", "full_fine_tune", "gradual_unfreezing", "labels_of", "linear_probe",
    "partial_fine_tune", "probabilities", "scored", "top_stage_fine_tune", "top_stages", "train",
]
