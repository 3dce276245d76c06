"""The reference run of notebook 02's fine-tuning comparisons, at a scale where they resolve:

    TLCOURSE_MIRROR=/work/shared/datasets python scripts/finetune_reference.py --deadline 23:58

CIFAR-10 (all 10 classes; ImageNet weights make it the *similar* domain, and 500 images per class
is *small* by :data:`tlcourse.strategies.SIZE_BOUNDARY`), EfficientNet-Lite0 with ImageNet weights.
Every arm runs one of :mod:`tlcourse.recipes` to a plateau (early stopping on a validation split
carved from CIFAR's train split, the best epoch kept), on one fixed training set; the seeds change
the head's initialisation, the batch order and the flips. Test images come from CIFAR's test split.

On this course's CPU the fine-tuned part is the top stage: ``head_conv`` (the last pretrained
convolution and its BatchNorm) trains on cached ``blocks.6`` activations, plain and mirrored
(:func:`tlcourse.recipes.top_stage_fine_tune`; exact, because the frozen stages run in eval mode).
Each comparison changes one thing (:data:`COMPARISONS`); :func:`comparisons` gives its numbers and
verdict, :func:`forest_figure` draws them. The work runs seed-major, so any prefix is balanced.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import numpy as np
from statsmodels.stats.power import TTestIndPower, TTestPower  # type: ignore[import-untyped]

from tlcourse import data, models, recipes, strategies
from tlcourse.evaluation import measurable, paired_comparison, seeds_comparison, verdict
from tlcourse.experiments.matrix_reference import stage_activations, to_inputs
from tlcourse.experiments.reference_runs import (
    Runner,
    bits,
    csv_text,
    log,
    open_runner,
    reference_arguments,
    run_meta,
    timed,
    unbits,
    write_result,
)
from tlcourse.paths import shown
from tlcourse.runtime import seed_everything

__all__ = ["ARMS", "COMPARISONS", "Design", "REFERENCE", "SMOKE", "comparisons", "design_mde", "forest_figure",
           "load_data", "main", "run_arm"]


@dataclass(frozen=True)
class Design:
    """Sizes and budgets of the run (the reference, or its smoke test)."""

    size: int = 64                 # input pixels (CIFAR's 32 px upsampled); chosen from measured throughput
    train_per_class: int = 500
    val_per_class: int = 100       # carved from CIFAR's train split, disjoint from training
    test_per_class: int = 300      # from CIFAR's test split
    seeds: int = 5
    max_epochs: int = 60           # a cap no run should reach: the meta counts the runs that did
    patience: int = 5
    batch_size: int = 64
    head_lr: float = 1e-3
    backbone_lr: float = 1e-4      # the fixed rate of every comparison but the rate's own
    other_backbone_lr: float = 1e-3
    cut: str = "blocks.6"          # cached stage; the stages above it (head_conv) fine-tune
    unfreeze_after: int = 2        # gradual unfreezing: the head alone for epochs 1-2
    classes: int = 10
    backbone: str = "efficientnet_lite0"
    data_seed: int = 0


REFERENCE = Design()
SMOKE = Design(train_per_class=3, val_per_class=2, test_per_class=3, seeds=2, max_epochs=2, patience=1,
               batch_size=8, unfreeze_after=1, classes=3)

#: The arms: recipe keyword arguments on top of the design's (``None``: the design's fixed rate).
ARMS: dict[str, dict[str, Any]] = {
    "frozen": dict(train_stages=[], bn="eval"),
    "frozen_bn_train": dict(train_stages=[], bn="train"),
    "fine_tune": dict(bn="eval"),
    "fine_tune_lr1e-3": dict(bn="eval", backbone_lr="other"),
    "fine_tune_bn_train": dict(bn="train"),
    "gradual": dict(bn="eval", gradual=True),
}

#: The comparisons: ``a`` minus ``b``, each changing one thing.
COMPARISONS: list[dict[str, str]] = [
    dict(key="frozen_vs_fine_tune", a="fine_tune", b="frozen",
         question="Fine-tune the top stage, or keep the backbone frozen and train the head alone?",
         changes="head_conv trains at backbone 1e-4 (a) or stays frozen (b)",
         fixed="head 1e-3, BatchNorm eval, data, flips, early stopping"),
    dict(key="backbone_lr", a="fine_tune_lr1e-3", b="fine_tune",
         question="A backbone rate of 1e-3 or 1e-4 (head 1e-3), BatchNorm in eval at both?",
         changes="backbone rate 1e-3 (a) vs 1e-4 (b)", fixed="head 1e-3, BatchNorm eval, stages, data"),
    dict(key="bn_frozen", a="frozen", b="frozen_bn_train",
         question="A frozen extractor: frozen BatchNorm in eval (frozen-eval) or left in train mode?",
         changes="BatchNorm eval (a) vs train (b) in the frozen head_conv", fixed="head 1e-3, nothing else trains"),
    dict(key="bn_fine_tune", a="fine_tune", b="fine_tune_bn_train",
         question="Fine-tuning at 1e-4: BatchNorm on pretrained statistics (eval) or batch statistics (train)?",
         changes="BatchNorm eval (a) vs train (b) in head_conv, which trains (frozen-eval = train here)",
         fixed="backbone 1e-4, head 1e-3, stages, data"),
    dict(key="gradual", a="gradual", b="fine_tune",
         question="Gradual unfreezing or all at once, at the same rates?",
         changes="head alone for the first epochs, then head_conv joins (a), vs head_conv from epoch 1 (b)",
         fixed="backbone 1e-4, head 1e-3, BatchNorm eval, stages, data"),
]


def design_mde(design: Design, discordance: float = 0.10, seed_sd: float = 0.005, alpha: float = 0.05,
               power: float = 0.8) -> dict[str, Any]:
    """The smallest differences the design detects with ``power`` at level ``alpha`` (statsmodels).

    Over seeds (Welch in the verdicts; here its equal-variance t approximation, TTestIndPower):
    ``effect`` standard deviations of the seed-to-seed spread, in points at ``seed_sd``. Per seed,
    on the same test images: a paired t on the per-image differences (TTestPower), whose spread is
    about sqrt(``discordance``), the share of images the two arms disagree on. Both assumptions are
    checked against the run in :func:`comparisons`. NaN: too few seeds for that power at any effect.
    """
    n_test = design.test_per_class * design.classes
    try:
        effect_seeds = TTestIndPower().solve_power(nobs1=design.seeds, ratio=1.0, alpha=alpha, power=power)
    except ValueError:  # too few seeds for any effect to reach that power (statsmodels finds no root)
        effect_seeds = float("nan")
    effect_paired = TTestPower().solve_power(nobs=n_test, alpha=alpha, power=power)
    return dict(alpha=alpha, power=power, seeds=design.seeds, n_test=n_test,
                seeds_effect_size=round(float(effect_seeds), 3), assumed_seed_sd=seed_sd,
                seeds_mde=round(float(effect_seeds) * seed_sd, 4),
                paired_effect_size=round(float(effect_paired), 4), assumed_discordance=discordance,
                paired_mde=round(float(effect_paired) * discordance ** 0.5, 4))


# --------------------------------------------------------------------------------------------
# Data, activations and one arm
# --------------------------------------------------------------------------------------------


def load_data(design: Design, device: str | None = None) -> dict[str, Any]:
    """CIFAR-10 train/val/test, decoded at ``design.size``, and the ``design.cut`` activations of each
    (training images also mirrored) from the frozen pretrained backbone in eval mode."""
    train, test = data.cifar10("train"), data.cifar10("test")
    y_all = data.targets_of(train)
    keep = [i for i, t in enumerate(y_all) if t < design.classes]
    val = [keep[i] for i in data.stratified_subset([y_all[i] for i in keep], design.val_per_class, 10_000)]
    rest = sorted(set(keep) - set(val))
    tr = [rest[i] for i in data.stratified_subset([y_all[i] for i in rest], design.train_per_class, design.data_seed)]
    y_te = data.targets_of(test)
    keep_te = [i for i, t in enumerate(y_te) if t < design.classes]
    te = [keep_te[i] for i in data.stratified_subset([y_te[i] for i in keep_te], design.test_per_class, 0)]
    pre = models.backbone_spec(design.backbone).preprocessing()
    model = models.build_backbone(design.backbone)
    out: dict[str, Any] = dict(classes=list(train.classes)[:design.classes], n_train=len(tr), n_val=len(val),
                               n_test=len(te), overlap=len(set(tr) & set(val)))
    for part, ds, idx in (("train", train, tr), ("val", train, val), ("test", test, te)):
        images, labels = data.load_images(ds, idx)
        x = to_inputs(images, design.size, pre.mean, pre.std)
        out[part] = (stage_activations(model, x, design.cut, device=device)[1], labels)
        if part == "train":
            out["train_flipped"] = stage_activations(model, x.flip(-1), design.cut, device=device)[1]
    return out


def run_arm(arm: str, d: Mapping[str, Any], design: Design, seed: int, device: str | None = None) -> dict[str, Any]:
    """Train one arm with its recipe on the cached activations, test once; the row's measured fields."""
    spec = dict(ARMS[arm])
    backbone_lr = design.other_backbone_lr if spec.pop("backbone_lr", None) == "other" else design.backbone_lr
    seed_everything(seed)  # the new head's initialisation follows the seed
    model = models.build_backbone(design.backbone, design.classes)
    options = dict(max_epochs=design.max_epochs, patience=design.patience, batch_size=design.batch_size, seed=seed,
                   device=device, test=d["test"], backbone_lr=backbone_lr, head_lr=design.head_lr,
                   flipped=d["train_flipped"], cut=design.cut)
    top = models.backbone_spec(model).stage_names[models.backbone_spec(model).stage_names.index(design.cut) + 1:]
    if spec.pop("gradual", False):
        r = recipes.gradual_unfreezing(model, {design.unfreeze_after: top}, d["train"], d["val"], **spec, **options)
    else:
        r = recipes.top_stage_fine_tune(model, options.pop("cut"), d["train"], d["val"], **spec, **options)
    history = [{"epoch": e["epoch"], "train_accuracy": e["train_acc"], "val_accuracy": e["val_acc"],
                "val_loss": e["val_loss"]} for e in r.history.epochs]
    return dict(accuracy=r.accuracy, n_test=len(r.correct), correct=bits(r.correct), val_accuracy=r.val_accuracy,
                epochs_used=r.epochs, best_epoch=r.best_epoch, stopped_on_plateau=r.stopped_early,
                hit_cap=r.epochs >= design.max_epochs and not r.stopped_early, collapsed=r.collapsed,
                device=r.device, train_seconds=round(r.seconds, 2), seconds_per_epoch=round(r.seconds / r.epochs, 2),
                backbone_lr=backbone_lr if r.extra["stages"] else None, head_lr=design.head_lr, bn=r.extra["bn"], stages=r.extra["stages"],
                trainable=r.extra["trainable"], recipe=r.extra["recipe"],
                schedule=r.extra.get("schedule"), unfrozen=r.extra.get("unfrozen"), history=history)


# --------------------------------------------------------------------------------------------
# The comparisons and their figure
# --------------------------------------------------------------------------------------------


def _by_seed(doc: Mapping[str, Any], arm: str) -> dict[int, dict[str, Any]]:
    """The scoreable rows of ``arm`` by seed (collapsed runs are never scored)."""
    return {r["seed"]: r for r in doc["rows"] if r["arm"] == arm and not r["collapsed"]}


def comparisons(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For each of :data:`COMPARISONS`: what it asks, changes and fixes; ``a`` minus ``b`` over seeds
    (mean, 95% interval, Welch p: :func:`tlcourse.evaluation.seeds_comparison`) and its verdict; the
    per-seed paired per-image tests (exact McNemar, Newcombe interval); the design's MDE and the MDE
    at the spread this run measured. Collapsed runs are left out and counted."""
    out = []
    for c in COMPARISONS:
        a, b = _by_seed(doc, c["a"]), _by_seed(doc, c["b"])
        collapsed = sum(r["collapsed"] for r in doc["rows"] if r["arm"] in (c["a"], c["b"]))
        if not a or not b:
            out.append(dict(c, n_seeds=0, collapsed=collapsed, verdict="not run yet"))
            continue
        s = seeds_comparison([r["accuracy"] for r in a.values()], [r["accuracy"] for r in b.values()])
        paired, disagree = [], []
        for seed in sorted(set(a) & set(b)):
            n = a[seed]["n_test"]
            ca, cb = np.array(unbits(a[seed]["correct"], n)), np.array(unbits(b[seed]["correct"], n))
            p = paired_comparison(ca, cb)
            disagree.append(float((ca != cb).mean()))
            paired.append(dict(seed=seed, diff=p.diff, low=p.low, high=p.high, p_value=p.p_value, measurable=measurable(p)))
        spread = [np.var([r["accuracy"] for r in side.values()], ddof=1) for side in (a, b) if len(side) > 1]
        sd = float(np.sqrt(np.mean(spread))) if spread else float("nan")  # pooled within-arm seed spread
        mde = design_mde(replace(Design(**doc["meta"]["design"]), seeds=min(len(a), len(b))),
                         discordance=float(np.mean(disagree)) if disagree else 0.1, seed_sd=sd)
        out.append(dict(c, n_seeds=min(len(a), len(b)), collapsed=collapsed, mean_a=s.mean_a, mean_b=s.mean_b,
                        diff=s.diff, low=s.low, high=s.high, p_value=s.p_value, measurable=measurable(s),
                        verdict=verdict(c["a"], c["b"], s), paired=paired,
                        paired_measurable=f"{sum(p['measurable'] for p in paired)} of {len(paired)} seeds",
                        mde_design=doc["meta"]["design_mde"], mde_measured=mde))
    return out


def forest_figure(doc: Mapping[str, Any]) -> Any:
    """Each comparison's difference (``a`` minus ``b``, points) with its 95% interval over seeds, and a
    zero line: a difference whose interval crosses it is not measurable at this size."""
    import matplotlib.pyplot as plt

    rows = [c for c in comparisons(doc) if "diff" in c]
    fig, ax = plt.subplots(figsize=(7.5, 0.7 * len(rows) + 1.4))
    for i, c in enumerate(rows):
        lo, hi = 100 * (c["diff"] - c["low"]), 100 * (c["high"] - c["diff"])
        ax.errorbar(100 * c["diff"], i, xerr=[[lo], [hi]], fmt="o", color="C0" if c["measurable"] else "0.5", capsize=4)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(rows)), [f"{c['a']}\nminus {c['b']}" for c in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("difference in test accuracy (points), 95% interval over seeds")
    ax.set_title(f"Notebook 02's comparisons at {doc['meta']['design']['train_per_class']} images/class "
                 f"(grey: not measurable)", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Output, progress file, smoke, threads, device, deadline."""
    p = argparse.ArgumentParser(description="The reference run of notebook 02's fine-tuning comparisons.")
    reference_arguments(p, "finetune_reference", "02_finetune_reference.json",
                        threads="torch CPU threads (1: fastest on a loaded 2-core CPU)",
                        device="where every run trains and extracts (auto: the GPU when there is one)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds to run (default: the design's; a larger number resumes a finished run with more)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) the reference run and write its JSON + CSV after every seed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    design = SMOKE if args.smoke else REFERENCE
    design = replace(design, seeds=args.seeds) if args.seeds else design
    runner = open_runner(args, "finetune_reference", lambda r: (
        f"test {r['accuracy']:.3f}, {r['epochs_used']} epochs (best {r['best_epoch']}), plateau {r['stopped_on_plateau']}"
        f", {r['seconds_per_epoch']:.1f} s/epoch"))
    t0 = time.time()
    log(f"design: {asdict(design)}; MDE {design_mde(design)}; {len(runner.done)} runs already in {shown(runner.progress)}")
    d, sec = timed(lambda: load_data(design, args.device))
    log(f"{d['n_train']} training, {d['n_val']} validation, {d['n_test']} test images; decoded and cached in {sec:.0f} s")
    for seed in range(design.seeds):
        for arm in ARMS:
            runner.run([arm, seed], arm, partial(run_arm, arm, d, design, seed, args.device), dict(arm=arm, seed=seed))
        left = [arm for _ in range(seed + 1, design.seeds) for arm in ARMS]
        log(f"seed {seed} done, {(time.time() - t0) / 60:.1f} min this session; ETA {runner.eta(left)}")
        write(args, argv, design, runner, d, time.time() - t0, complete=False)
    doc = write(args, argv, design, runner, d, time.time() - t0, complete=True)
    for c in comparisons(doc):
        log(f"{c['key']}: {c['verdict']}")
    return 0


CSV_FIELDS = ["arm", "seed", "accuracy", "n_test", "val_accuracy", "epochs_used", "best_epoch", "stopped_on_plateau",
              "hit_cap", "collapsed", "backbone_lr", "head_lr", "bn", "recipe", "trainable", "seconds",
              "seconds_per_epoch", "device"]


def write(args: argparse.Namespace, argv: Sequence[str], design: Design, runner: Runner, d: Mapping[str, Any],
          seconds: float, *, complete: bool) -> dict[str, Any]:
    """The result file (JSON + CSV) from the rows so far, with the ``meta`` a reader needs to trust it."""
    rows = sorted(({k: v for k, v in r.items() if k not in ("key", "kind_key")} for r in runner.rows),
                  key=lambda r: (list(ARMS).index(r["arm"]), r["seed"]))
    meta = dict(
        kind="finetune_reference", complete=complete and not runner.skipped and len(rows) == design.seeds * len(ARMS),
        smoke=args.smoke, **run_meta("scripts/finetune_reference.py", argv, args.threads, args.device, runner, seconds),
        design=asdict(design), design_mde=design_mde(design), skipped=runner.skipped,
        runs_hit_cap=sum(r["hit_cap"] for r in rows), runs_collapsed=sum(r["collapsed"] for r in rows),
        quadrant=("small_similar: CIFAR-10 with ImageNet weights is the decision matrix's similar domain, and "
                  f"{design.train_per_class} images per class is below SIZE_BOUNDARY = {strategies.SIZE_BOUNDARY}"),
        classes=d["classes"],
        n_train=d["n_train"], n_val=d["n_val"], n_test=d["n_test"], train_val_overlap=d["overlap"],
        data=(f"CIFAR-10, {design.classes} classes: {design.train_per_class} training and {design.val_per_class} "
              f"validation images per class from its train split (disjoint, fixed across seeds), "
              f"{design.test_per_class} test images per class from its test split; 32 px upsampled to {design.size}"),
        budget=(f"every arm: Adam, batch {design.batch_size}, random horizontal flips (cached activations of the "
                f"mirrored images), early stopping on validation accuracy (patience {design.patience}, at most "
                f"{design.max_epochs} epochs), best-validation weights kept; head {design.head_lr:g}; fine-tuned: "
                f"the stages above {design.cut} (head_conv) on cached {design.cut} activations of the frozen, "
                f"eval-mode pretrained backbone; seeds vary the head's initialisation, batch order and flips"),
        size_choice=("64 px, not 96: measured before the run with 1 torch thread on this shared 2-core CPU (load "
                     "average 10-13), EfficientNet-Lite0 forward 132 img/s at 64 px vs 43 img/s at 96 px, "
                     "head_conv training 1436 vs 1081 img/s; 96 px would not fit ~40 min for 5 seeds x 6 arms"))
    doc = dict(meta=meta, rows=rows)
    write_result(args.out, doc, csv_text(rows, CSV_FIELDS))
    return doc
