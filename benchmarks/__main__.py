"""Run the benchmark suite: ``python -m benchmarks [--only NAME ...] [--quick]``.

The default run (every section, 160 images for the extraction ablation, the notebooks in their ``ci`` profile, the naive recipe
extrapolated from 1 measured epoch) takes under 10 minutes on a 2-core laptop CPU. ``--quick`` is
a smoke run (64 images, fewer loader settings, no notebooks). ``--notebook-profile default``
measures the lessons as learners run them (longer; run it with ``--only notebooks``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import SECTIONS
from benchmarks.common import Section, out_dir, write_section


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="NAME",
                        help=f"run only these sections ({', '.join(SECTIONS)})")
    parser.add_argument("--quick", action="store_true", help="smoke run: small subsets, no notebooks")
    parser.add_argument("--images", type=int, default=None,
                        help="images for the extraction section (default 160, --quick 64; 0 = all 894)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the headline section")
    parser.add_argument("--min-seconds", type=float, default=5.0,
                        help="each headline timing repeats its pass until it lasts this long")
    parser.add_argument("--extraction-only", action="store_true",
                        help="headline: only the interleaved extraction rounds (no int8 probe, no phone photos)")
    parser.add_argument("--naive-epochs", type=int, default=1,
                        help="epochs the naive recipe really runs; the 25-epoch total is extrapolated")
    parser.add_argument("--notebook-profile", default="ci", choices=("ci", "default", "gpu"))
    parser.add_argument("--notebooks", nargs="+", metavar="NN", help="only these notebooks (e.g. 01 03)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile in the extraction section")
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = 64 if args.quick else 160
    args.sections = list(args.only or [s for s in SECTIONS if not (args.quick and s == "notebooks")])
    return args


def run_section(name: str, args: argparse.Namespace) -> Section:
    if name == "headline":
        from benchmarks import headline

        return headline.run(images=args.images or None, rounds=2 if args.quick else args.rounds,
                            min_seconds=1.0 if args.quick else args.min_seconds, phones=20 if args.quick else 200,
                            parts=("extraction",) if args.extraction_only else ("extraction", "int8", "phones"))
    if name == "extraction":
        from benchmarks import extraction

        return extraction.run(images=args.images or None, compile_model=args.compile)
    if name == "training_steps":
        from benchmarks import training_steps

        return training_steps.run(steps=2 if args.quick else 4, rounds=1 if args.quick else 2)
    if name == "frozen_recipe":
        from benchmarks import frozen_recipe

        return frozen_recipe.run(naive_epochs=args.naive_epochs)
    if name == "loaders":
        from benchmarks import loaders

        return loaders.run(images=args.images if args.quick else 256,
                           workers=(0, 2) if args.quick else (0, 1, 2), batches=(64,) if args.quick else (16, 64))
    if name == "notebooks":
        from benchmarks import notebooks

        return notebooks.run(profile=args.notebook_profile, selected=args.notebooks)
    raise ValueError(f"Unknown section {name!r}; the sections are {SECTIONS}")


def section_reports() -> list[Path]:
    """The latest ``<section>.md`` of every section in ``build/benchmarks`` (``notebooks-<profile>`` too)."""
    folder = out_dir()
    return [p for name in SECTIONS for p in sorted(folder.glob(f"{name}*.md"))]


def main(argv: Sequence[str] | None = None) -> list[Section]:
    args = parse_args(argv)
    done: list[Section] = []
    start = time.perf_counter()
    for name in args.sections:
        t = time.perf_counter()
        section = run_section(name, args)
        section.data["section_seconds"] = round(time.perf_counter() - t, 1)
        print(f"[benchmarks] {name}: {section.data['section_seconds']} s -> {write_section(section)}", flush=True)
        done.append(section)
    total = time.perf_counter() - start
    header = (f"# Benchmark summary\n\nThis run: {', '.join(s.name for s in done)} in {total:.0f} s "
              f"({total / 60:.1f} min){' (--quick)' if args.quick else ''}. Below: every section's latest "
              f"report in `{out_dir()}`.\n\n")
    (out_dir() / "summary.md").write_text(header + "\n\n".join(p.read_text() for p in section_reports()))
    print(f"[benchmarks] done in {total:.0f} s -> {out_dir() / 'summary.md'}")
    return done


if __name__ == "__main__":
    main()
