"""Your own images in one call: ``fit_folder(FOLDER, out)`` or ``python -m tlcourse fit FOLDER --out DIR``.

An advisor that measures instead of guessing: the textbook's prior comes from the size x
similarity matrix, and then the candidate strategies are run on the learner's own data, cheapest
first and within a time budget, chosen on validation, tested once, exported and reported.

- :mod:`.scan`         the folder: layouts, refusals, duplicates, splits (:func:`read_folder`)
- :mod:`.activations`  one cached backbone pass over every image and its mirror image
- :mod:`.candidates`   probes, top-stage fine-tune, full fine-tune
- :mod:`.deploy`       the chosen candidate as one network, bundle + ONNX, fresh-process checks
- :mod:`.report`       the choice, the test, ``report.json`` and ``report.html``
- :mod:`.pipeline`     :func:`fit_folder`, which runs them in order
- :mod:`.examples`     course datasets written out as plain folders (:func:`write_course_folder`)
"""

from tlcourse.experiments.own_data.examples import write_course_folder
from tlcourse.experiments.own_data.pipeline import LARGER, fit_folder
from tlcourse.experiments.own_data.report import FitReport
from tlcourse.experiments.own_data.scan import FolderRefused, UserData, read_folder
from tlcourse.inference import load_bundle as load_model  # fit's model.pt, of either kind: the one loader

__all__ = ["LARGER", "FitReport", "FolderRefused", "UserData", "fit_folder", "load_model", "read_folder", "write_course_folder"]
