"""The reference run of notebook 04's decision matrix, at the textbook's scale, in one command.

    TLCOURSE_MIRROR=/work/shared/datasets python scripts/decision_matrix_reference.py \\
        --out tlcourse/experiments/results/04_decision_matrix_reference.json

Five strategies (two probes, partial and full fine-tuning, from scratch) in four quadrants:
similar = two CIFAR-10 classes, dissimilar = PneumoniaMNIST, each at "small" and "large" (>= 1000
images per class) training sizes, several seeds. Every finished run is appended to a progress
file, so an interrupted run continues where it stopped; ``--smoke`` runs the same code at a tiny
scale. The code is :func:`tlcourse.experiments.decision_matrix_reference.main`.
"""

import sys

from tlcourse.experiments.decision_matrix_reference import main

if __name__ == "__main__":
    sys.exit(main())
