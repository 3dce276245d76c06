"""The seed articles' recipes and claims, measured (issue 23, item 6), in one command.

    TLCOURSE_MIRROR=/work/shared/datasets python scripts/articles_reference.py --threads 2 --deadline 23:58

Runs each recipe of the five source articles as written where this offline machine allows (every
translation is stated in the claims table), over several seeds, resumably; ``--smoke`` runs the
same code on a tiny subset. The code is :func:`tlcourse.experiments.articles_reference.main`.
"""

import sys

from tlcourse.experiments.articles_reference import main

if __name__ == "__main__":
    sys.exit(main())
