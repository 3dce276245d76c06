"""The course's benchmark suite: ``python -m benchmarks`` (see ``__main__``).

Sections, each writing ``build/benchmarks/<section>.json`` and ``.md``:

- ``headline``: naive loop vs the course (float32 and int8) in interleaved rounds of at least 5 s,
  int8 vs float32 probe accuracy (paired), and phone-sized photos with draft decoding
  (:mod:`benchmarks.headline`);
- ``extraction``: feature-extraction throughput of the default backbone end to end from JPEG,
  naive loop vs the course's path, with an ablation (:mod:`benchmarks.extraction`);
- ``frozen_recipe``: the classic 25-epoch frozen-backbone recipe, naive vs cached features
  (:mod:`benchmarks.frozen_recipe`);
- ``training_steps``: CPU training steps, float32 vs bf16 autocast at 64/128/224 px
  (:mod:`benchmarks.training_steps`);
- ``loaders``: JPEG decode + transform throughput by DataLoader workers (:mod:`benchmarks.loaders`);
- ``notebooks``: wall time and peak memory of each notebook and the whole course
  (:mod:`benchmarks.notebooks`).

``build/benchmarks/summary.md`` concatenates the sections of the last run.
"""

SECTIONS = ("headline", "extraction", "training_steps", "frozen_recipe", "loaders", "notebooks")
