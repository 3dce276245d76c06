"""The reference run of notebook 02's fine-tuning comparisons, in one command:

    TLCOURSE_MIRROR=/work/shared/datasets python scripts/finetune_reference.py --deadline 23:58

Resumable (a progress file under build/); ``--smoke`` runs the same code at a tiny scale. The code is
:func:`tlcourse.experiments.finetune_reference.main`.
"""

import sys

from tlcourse.experiments.finetune_reference import main

if __name__ == "__main__":
    sys.exit(main())
