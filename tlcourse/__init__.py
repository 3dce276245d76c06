"""tlcourse: the tested helpers behind the notebooks of *Transfer Learning for Computer Vision*.

The top level is what the lessons teach, a module (or package) per concept, in the order the
lessons meet them:

- :mod:`tlcourse.data`      datasets: registry and fetching, image folders, course datasets, splits
- :mod:`tlcourse.models`    backbones: registry and preprocessing, weights, head surgery, freezing
- :mod:`tlcourse.train`     the loop notebook 02 teaches (``train_one_epoch``, ``evaluate``), and
                            ``fit`` with callbacks: checkpoints, resume, early stopping, the best epoch
- :mod:`tlcourse.recipes`   each transfer strategy's training, written once on ``fit``
- :mod:`tlcourse.finetune`  gradual unfreezing, BatchNorm statistics drift
- :mod:`tlcourse.features`  frozen-backbone features, their disk cache, linear probes, near-duplicates
- :mod:`tlcourse.evaluation` train/validation/test splits, intervals, paired tests, verdicts
- :mod:`tlcourse.strategies` the textbook's size x similarity matrix
- :mod:`tlcourse.explain`, :mod:`tlcourse.inference`  Grad-CAM; predicting and exporting
- :mod:`tlcourse.plots`, :mod:`tlcourse.tables`  figures and tables for the notebooks

One floor up, :mod:`tlcourse.experiments` holds the applications built on them (the decision
matrix and its reference run, the findings, the advisor, ``python -m tlcourse fit``, multi-process
training), and :mod:`tlcourse.courseware` the tooling that runs and presents the course (a
lesson's setup, the notebook runner, recorded results, slides, exercises, the environment report).

Shared policies have one home each: :mod:`tlcourse.runtime` (device, precision, seeds),
:mod:`tlcourse.cpu_threads` (CPU threads), :mod:`tlcourse._io` (atomic writes, readable errors
for damaged files), :mod:`tlcourse.hooks` (forward-hook capture), :mod:`tlcourse.paths` (where
data and build files go, and how outputs name them).
"""

__version__ = "0.1.0"
