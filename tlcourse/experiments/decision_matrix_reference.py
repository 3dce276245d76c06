"""The reference run of notebook 04's decision matrix, at the textbook's scale, in one command:

    TLCOURSE_MIRROR=/work/shared/datasets python scripts/decision_matrix_reference.py

It runs :mod:`~tlcourse.experiments.matrix_reference`'s strategies in four quadrants over several
seeds, resumably (:mod:`~tlcourse.experiments.reference_runs`): the backbone learning rate is chosen
once per domain on validation, then the matrix runs seed-major, so any prefix is balanced. The
result (JSON + CSV) is written after every subset.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from tlcourse import models, strategies
from tlcourse.experiments import decision_matrix
from tlcourse.experiments.matrix_reference import (
    REFERENCE_SCALE,
    SMOKE_SCALE,
    Scale,
    add_activations,
    cut_stage,
    dataset_name,
    load_domain,
    matrix_rows,
    run_probes,
    run_trained,
    scale_dict,
)
from tlcourse.experiments.reference_runs import Runner, log, open_runner, reference_arguments, run_meta, timed
from tlcourse.paths import shown

__all__ = ["DOMAINS", "main", "parse_args", "plan", "write_reference"]

DOMAINS = ("similar", "dissimilar")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The reference run's command line: output, progress file, scale, threads, device, deadline."""
    p = argparse.ArgumentParser(description="The reference run of notebook 04's decision matrix, at the textbook's scale.")
    reference_arguments(p, "decision_matrix_reference", "04_decision_matrix_reference.json",
                        device="where every run trains and extracts (auto: the GPU when there is one)")
    p.add_argument("--domain", choices=DOMAINS, default=None,
                   help="run one domain only (two processes of one thread each share a 2-core CPU better than one "
                        "process of two threads); a last call without it, once both are done, writes the complete result")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="run these seeds only (another process can take the others; the lr sweep needs seed 0's "
                        "process or a finished sweep)")
    return p.parse_args(argv)


def plan(scale: Scale, domains: Sequence[str] = DOMAINS, seeds: Sequence[int] | None = None
         ) -> list[tuple[str, str, int]]:
    """(size, domain, seed) in run order: seed-major, so any prefix is a balanced matrix (``seeds``: only these)."""
    out = []
    for seed in seeds if seeds is not None else range(max(scale.seeds_small, scale.seeds_large)):
        for size_name in ("small", "large"):
            if seed in scale.seeds(size_name):
                out += [(size_name, domain, seed) for domain in domains]
    return out


def _describe(row: dict[str, Any]) -> str:
    if "stages" in row:
        return "per-stage test accuracy " + str({st["stage"]: round(st["accuracy"], 3) for st in row["stages"]})
    epochs = "" if "epochs_used" not in row else f", {row['epochs_used']} epochs, plateau {row['stopped_on_plateau']}"
    return f"test {row.get('accuracy', float('nan')):.3f}{epochs}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) the reference run and write its JSON + CSV; ``--smoke`` runs it in seconds."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    scale = SMOKE_SCALE if args.smoke else REFERENCE_SCALE
    runner = open_runner(args, "decision_matrix_reference", _describe)
    t0 = time.time()
    log(f"scale: {scale_dict(scale)}; {len(runner.done)} runs already in {shown(runner.progress)}")
    names = [args.domain] if args.domain else list(DOMAINS)
    domains = _Domains(scale, args.device)  # decoded on first use: a finished run only rewrites its result
    last = models.backbone_spec(scale.backbone).stage_names[-1]

    # 1. The pretrained layers' learning rate, chosen once per domain on validation (partial_ft, large, seed 0).
    chosen_lr = {}
    for name in names:
        vals = {}
        for lr in scale.backbone_lrs:
            row = runner.run(["sweep", name, lr], "sweep",
                             lambda name=name, lr=lr: run_trained("partial_ft", domains[name],
                                                                  domains[name]["subsets"]["large", 0], "large",
                                                                  scale, 0, lr, device=args.device),
                             dict(kind="lr_sweep", domain=name, backbone_lr=lr))
            vals[lr] = (row["val_accuracy"], -abs(np.log10(lr) + 4)) if row else (-1, 0)
        chosen_lr[name] = max(vals, key=lambda lr: vals[lr])
        log(f"{name}: backbone learning rate {chosen_lr[name]:g} (validation accuracy by rate: "
            + ", ".join(f"{lr:g}: {v[0]:.3f}" for lr, v in vals.items()) + ")")

    # 2. The matrix, seed-major.
    steps = plan(scale, names, args.seeds)
    for k, (size_name, domain, seed) in enumerate(steps):
        quadrant = f"{size_name}_{domain}"
        base = dict(kind="matrix", quadrant=quadrant, domain=domain, dataset=dataset_name(domain, scale),
                    n_per_class=scale.n(size_name), seed=seed, size=scale.size)

        def job(strategy: str | None, domain: str = domain, size_name: str = size_name, seed: int = seed
                ) -> dict[str, Any]:
            d = domains[domain]
            idx = d["subsets"][size_name, seed]
            if strategy is None:
                return run_probes(d, idx, scale, seed)
            return run_trained(strategy, d, idx, size_name, scale, seed, chosen_lr[domain], device=args.device)

        runner.run(["probes", quadrant, seed], f"probes-{size_name}", partial(job, None), dict(base, kind="stage_probes"))
        for strategy in strategies.TRAINED:
            runner.run([strategy, quadrant, seed], f"{strategy}-{quadrant}", partial(job, strategy),
                       dict(base, strategy=strategy))
        kinds = [kind for s, dom, _ in steps[k + 1:]
                 for kind in [f"probes-{s}"] + [f"{t}-{s}_{dom}" for t in strategies.TRAINED]]
        log(f"progress: {k + 1}/{len(steps)} subsets in {(time.time() - t0) / 60:.1f} min this session; "
            f"ETA {runner.eta(kinds)}")
        write_reference(args, argv, scale, runner, chosen_lr, last, time.time() - t0, complete=False)
    whole = args.domain is None and args.seeds is None
    write_reference(args, argv, scale, runner, chosen_lr, last, time.time() - t0, complete=whole)
    log(f"done: {shown(args.out)}")
    return 0


class _Domains(dict):
    """``{domain: decoded images, subsets and activations}``, each loaded on first use."""

    def __init__(self, scale: Scale, device: str) -> None:
        super().__init__()
        self.scale, self.device = scale, device

    def __missing__(self, name: str) -> dict[str, Any]:
        d, sec = timed(lambda: load_domain(name, self.scale))
        _, sec2 = timed(lambda: add_activations(d, self.scale, device=self.device))
        log(f"{name}: {len(d['x'])} training-pool images, {len(d['val_y'])} validation, {len(d['test_y'])} test; "
            f"decoded in {sec:.0f} s, activations in {sec2:.0f} s")
        self[name] = d
        return d


def write_reference(args: argparse.Namespace, argv: Sequence[str], scale: Scale, runner: Runner,
                    chosen_lr: dict[str, float], last: str, seconds: float, *, complete: bool) -> None:
    """The result file (JSON + CSV) from the rows so far, with the ``meta`` a reader needs to trust it."""
    rows, stage_rows = matrix_rows(runner.rows, last)
    sweep = [{k: r[k] for k in ("domain", "backbone_lr", "val_accuracy", "epochs_used", "stopped_on_plateau",
                                "seconds")} for r in runner.rows if r.get("kind") == "lr_sweep"]
    meta = dict(
        kind="decision_matrix_reference", complete=complete and not runner.skipped,
        **run_meta("scripts/decision_matrix_reference.py", argv, args.threads, args.device, runner, seconds),
        backbone=scale.backbone, size=scale.size, small=scale.small, large=scale.large,
        seeds={"small": scale.seeds("small"), "large": scale.seeds("large")}, scale=scale_dict(scale),
        backbone_lr=chosen_lr, lr_sweep=sweep, cut_stage=cut_stage(scale), last_stage=last,
        skipped=runner.skipped, smoke=args.smoke,
        budget=("trained strategies: Adam, batch %d, random horizontal flips, early stopping on validation accuracy "
                "(patience %d of at most %d epochs small, %d of %d large; from scratch a %d-epoch linear warm-up, "
                "patience %d small and %d large, batch %d small), best-validation weights restored; head lr %g, "
                "pretrained layers at the rate chosen on validation, scratch all at %g (%g small: 1e-3 was still "
                "improving after 40 epochs in a trial on small & similar, seed 0); probes: standardised logistic "
                "regression, C from %s chosen on validation; probe_early = the best earlier stage on validation"
                % (scale.batch_size, scale.patience_small, scale.max_epochs_small, scale.patience_large,
                   scale.max_epochs_large, scale.scratch_warmup_epochs, scale.scratch_patience_small,
                   scale.scratch_patience_large, scale.scratch_batch_small, scale.head_lr, scale.scratch_lr,
                   scale.scratch_lr_small, list(scale.probe_cs))),
        data=("similar: CIFAR-10 %s (32 px upsampled to %d; validation carved from CIFAR's train split, test from "
              "its test split); dissimilar: PneumoniaMNIST, the course mirror's balanced copy (1214 training images "
              "per class; the official file has 1,214 normal and 3,494 pneumonia), 28 px upsampled to %d, validation "
              "from its val split, test = its test split" % ("/".join(scale.similar_classes), scale.size, scale.size)),
        test_per_class=scale.test_per_class, val_per_class=scale.val_per_class)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    decision_matrix.save_results(rows, args.out, meta, extra={"stage_probes": stage_rows})


if __name__ == "__main__":
    sys.exit(main())
