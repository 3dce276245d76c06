"""Does bf16 autocast on the CPU train as well as float32, and how much faster? One command:

    TLCOURSE_MIRROR=/work/shared/datasets python scripts/bf16_parity.py \\
        --out tlcourse/experiments/results/bf16_parity.json

The code is :mod:`tlcourse.experiments.bf16_parity`.
"""

from tlcourse.experiments.bf16_parity import main

if __name__ == "__main__":
    main()
