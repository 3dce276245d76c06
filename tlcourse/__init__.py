"""tlcourse: the tested helpers behind the notebooks of *Transfer Learning for Computer Vision*.

A module (or package) per concept the lessons share, in the order the lessons meet them:

- :mod:`tlcourse.data`      datasets: registry and fetching, image folders, course datasets, splits
- :mod:`tlcourse.models`    backbones: registry and preprocessing, weights, head surgery, freezing
- :mod:`tlcourse.train`     the loop notebook 02 teaches (``train_one_epoch``, ``evaluate``), and
                            ``fit`` with callbacks for checkpoints, resume and unfreezing
- :mod:`tlcourse.finetune`  gradual unfreezing, BatchNorm statistics drift
- :mod:`tlcourse.features`  frozen-backbone features, their disk cache, linear probes
- :mod:`tlcourse.evaluation` train/validation/test splits, intervals, paired tests, verdicts
- :mod:`tlcourse.strategies`, :mod:`tlcourse.decision_matrix`, :mod:`tlcourse.advisor`
                            the size x similarity matrix: the textbook, the measurement, advice
- :mod:`tlcourse.explain`, :mod:`tlcourse.inference`  Grad-CAM; predicting and exporting
- :mod:`tlcourse.plots`, :mod:`tlcourse.tables`  figures and tables for the notebooks
- :mod:`tlcourse.course`, :mod:`tlcourse.results`, :mod:`tlcourse.slides`, :mod:`tlcourse.exercises`
                            a lesson's setup, running the notebooks, recorded results, slides

Shared policies have one home each: :mod:`tlcourse.runtime` (device, precision, CPU threads,
seeds), :mod:`tlcourse._io` (atomic writes), :mod:`tlcourse.hooks` (forward-hook capture),
:mod:`tlcourse.paths` (where data and build files go). Multi-process training,
:mod:`tlcourse.distributed`, plugs into ``fit`` as a callback.
"""

__version__ = "0.1.0"
