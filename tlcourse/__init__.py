"""tlcourse: the tested helpers behind the notebooks of *Transfer Learning for Computer Vision*.

One module per concept the lessons share:

- :mod:`tlcourse.data`     datasets: registry, lookup (data/ -> mirror -> download), subsets, splits
- :mod:`tlcourse.models`   backbones: registry, preprocessing, head surgery, freezing, param groups
- :mod:`tlcourse.train`    ``train_loop`` / ``test_loop`` / ``fit`` with checkpoints and resume
- :mod:`tlcourse.features` frozen-backbone features, their disk cache, linear probes
- :mod:`tlcourse.finetune` gradual unfreezing, BatchNorm statistics drift
- :mod:`tlcourse.plots`    figures: image grids, training curves, confusion matrices
- :mod:`tlcourse.results`  notebook profiles and the metrics every notebook records
- :mod:`tlcourse.exercises` instant feedback on the notebooks' exercises
- :mod:`tlcourse.course`, :mod:`tlcourse.slides`  run the notebooks; render them as slide decks
"""

__version__ = "0.1.0"
