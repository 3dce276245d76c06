"""The course's applications, built on the lesson modules one floor down.

- :mod:`~tlcourse.experiments.matrix_reference`  the decision matrix, run live (notebook 04) and at
  the textbook's scale (``scripts/decision_matrix_reference.py``)
- :mod:`~tlcourse.experiments.decision_matrix`   its results: summaries, verdicts, the figure
- :mod:`~tlcourse.experiments.findings`          every claim the course makes, generated from a run
- :mod:`~tlcourse.experiments.advisor`           the similarity score and the advice that quotes them
- :mod:`~tlcourse.experiments.own_data`          ``python -m tlcourse fit FOLDER``
- :mod:`~tlcourse.experiments.distributed`       multi-process training (torchrun/DDP), a ``fit`` callback
- :mod:`~tlcourse.experiments.bf16_parity`       does bf16 autocast train as well as float32 on a CPU?
- :mod:`~tlcourse.experiments.finetune_reference` notebook 02's fine-tuning comparisons at a scale where they resolve
- :mod:`~tlcourse.experiments.reference_runs`    what every reference run shares: resumable rows, meta
- :mod:`~tlcourse.experiments.articles_reference` the seed articles' recipes, run as written (``scripts/articles_reference.py``)
- :mod:`~tlcourse.experiments.articles_claims`   their claims as a table: measured, with intervals and verdicts

The committed reference runs ship inside the package (``results/``): :func:`results_file` finds
them in a checkout and in an installed wheel alike.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["RESULTS", "results_file"]

#: The committed result files of the reference runs, by name.
RESULTS = ("01_normalisation.json", "02_finetune_reference.json", "02_finetune_reference.csv", "04_decision_matrix_reference.json",
           "04_decision_matrix_reference.csv", "bf16_parity.json", "articles_reference.json", "articles_reference.csv")


def results_file(name: str) -> Path:
    """The committed result file ``name`` (one of :data:`RESULTS`), read as package data."""
    if name not in RESULTS:
        raise ValueError(f"No committed result file {name!r}; the files are: {', '.join(RESULTS)}")
    return Path(str(resources.files(__name__).joinpath("results", name)))
