"""``fit(FOLDER, out)``: from a learner's image folder to a chosen, tested and exported model.

The steps, each announced with a line (and a progress bar where it takes a while):

1. read the folder, refuse what cannot work, drop duplicates, carve the splits (:mod:`.scan`);
2. place the data on the size x similarity matrix and state the textbook's prior
   (:mod:`tlcourse.advisor`);
3. one cached pass of the main backbone over every image and its mirror image
   (:mod:`.activations`); near-duplicates of training images leave the test set;
4. the candidates, cheapest first, while the budget lasts (:mod:`.candidates`); each finished
   candidate is saved at once, so an interrupted run resumes where it stopped;
5. the choice on validation, the test set once, the paired difference to the prior's strategy;
6. export and checks in fresh processes (:mod:`.deploy`), then ``report.json`` and
   ``report.html`` (:mod:`.report`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tlcourse._io import DamagedFileError, atomic_save, read_or_explain, read_torch
from tlcourse.advisor import recommend, similarity_score
from tlcourse.features import near_duplicates
from tlcourse.models import DEFAULT_BACKBONE, Preprocessing, backbone_spec, build_backbone
from tlcourse.own_data.activations import ImageFiles, Views, backbone_pass, pass_is_cached
from tlcourse.own_data.candidates import FT_EPOCHS, Candidate, full_finetune, probe_candidates, top_stage_finetune
from tlcourse.own_data.report import FitReport, finish
from tlcourse.own_data.scan import UserData, read_folder
from tlcourse.stages import split_below_top
from tlcourse.strategies import STRATEGY_LABELS

__all__ = ["LARGER", "NEAR_DUPLICATE", "fit"]

#: The larger offline backbones tried after the main one, cheapest first.
LARGER = ("efficientnet_lite1", "efficientnet_lite2")
#: Cost of a backbone's pass relative to Lite0's, measured on a 2-core CPU (for the budget only).
RELATIVE_COST = {"efficientnet_lite0": 1.0, "efficientnet_lite1": 1.4, "efficientnet_lite2": 2.0}
#: Cosine similarity (centred pooled features) above which a test image counts as a near copy of a training image.
NEAR_DUPLICATE = 0.95
#: Seconds kept back for testing, export, the fresh-process checks and the report (measured 21-39 s
#: for Alien vs Predator on a busy 2-core CPU; the budget is a target, not a hard stop).
RESERVE = 30.0


class _Log:
    """Prints a line per decision, stamped with the seconds since the start, and keeps them."""

    def __init__(self, echo: Callable[[str], Any] | None) -> None:
        self.start, self.lines, self.echo = time.perf_counter(), [], echo

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {message}"
        self.lines.append(line)
        if self.echo is not None:
            self.echo(line)


def _preprocessing(backbone: str, crop: int | None) -> Preprocessing:
    """The weights' own preprocessing, at ``crop`` px with the weights' resize/crop ratio when given."""
    own = backbone_spec(backbone).preprocessing()
    if crop is None:
        return own
    return Preprocessing(resize=round(crop * own.resize / own.crop), crop=crop, mean=own.mean, std=own.std,
                         interpolation=own.interpolation)


def _saved(path: Path) -> Any:
    """A saved candidate list or value, or None when missing or damaged (then it is computed again)."""
    if not path.is_file():
        return None
    try:
        return read_or_explain(path, read_torch, what="saved candidate", remedy="It is computed again.")
    except (DamagedFileError, OSError):
        return None


def _store(candidates: list[Candidate], path: Path) -> None:
    atomic_save([{k: v for k, v in vars(c).items() if k != "resumed"} for c in candidates], path)


def _load_candidates(path: Path) -> list[Candidate] | None:
    rows = _saved(path)
    return None if rows is None else [Candidate(**row, resumed=True) for row in rows]


def _prior(data: UserData, model: torch.nn.Module, cache: Path, key: str, seed: int) -> tuple[Any, float]:
    """The textbook's recommendation for this folder: smallest training class x similarity score."""
    path = cache / f"similarity-{key[:20]}.pt"
    saved = _saved(path)
    if saved is None:
        train = [data.samples[i] for i in data.indices("train")]
        saved = {"score": similarity_score(model, ImageFiles(train, lambda img: img), max_images=64, seed=seed).score}
        atomic_save(saved, path)
    n_per_class = min(n for n in data.counts()["train"].values())
    return recommend(max(n_per_class, 1), float(saved["score"])), float(saved["score"])


def _drop_near_copies(data: UserData, views: Views, parts: dict[str, list[int]]) -> list[dict[str, Any]]:
    """Test images whose features nearly equal a training or validation image's leave the test set."""
    pool, test = parts["train"] + parts["val"], parts["test"]
    feats = views.plain["pooled"]
    pairs = near_duplicates(feats[test], feats[pool], threshold=NEAR_DUPLICATE)
    drop = {test[p.i] for p in pairs}
    parts["test"] = [i for i in test if i not in drop]
    return [{"test": data.samples[test[p.i]][0], "train": data.samples[pool[p.j]][0],
             "similarity": round(p.similarity, 4)} for p in pairs]


def fit(folder: str | os.PathLike[str], out: str | os.PathLike[str], *, budget: float = 120.0,
        backbone: str = DEFAULT_BACKBONE, larger: Sequence[str] = LARGER, seed: int = 0, crop: int | None = None,
        full_ft: str = "auto", export: bool = True, progress: bool = True, echo: Callable[[str], Any] | None = print) -> FitReport:
    """Fit a classifier to ``folder`` and write ``out/report.json``, ``out/report.html`` and the model files.

    Args:
        folder: ``FOLDER/<class>/<image>``, or ``FOLDER/{train,val|validation[,test]}/<class>/<image>``.
        out: where the report, the model and the caches go (a re-run with the same ``out`` resumes).
        budget: seconds for the whole run; candidates that would not fit are skipped, with a line saying so.
        backbone: the main backbone (its probes and top-stage fine-tune come first).
        larger: larger backbones whose probes are tried next, while the budget lasts.
        crop: the input size (default: the weights' own); smaller is faster and less accurate.
        full_ft: ``"auto"`` (when the estimated time fits the budget), ``"always"`` or ``"never"``.
        export: write and check ``model.pt`` / ``model.onnx`` (``False`` saves the export's time).
        echo: called with each decision line (``None``: silent).
    """
    log = _Log(echo)
    out = Path(out).expanduser().resolve()
    log(f"reading {folder}")
    data = read_folder(folder, seed=seed)
    log(f"{len(data.samples)} images in {len(data.classes)} classes ({', '.join(data.classes)}); "
        f"{len(data.bad)} unusable files skipped; {len(data.dropped)} duplicate files left out")
    log(data.notes[0])
    key = hashlib.sha256(f"{data.fingerprint()}|{seed}|{crop}|{backbone}".encode()).hexdigest()
    cache, saved = out / "cache", out / "candidates" / key[:16]
    saved.mkdir(parents=True, exist_ok=True)
    model = build_backbone(backbone)
    rec, similarity = _prior(data, model, cache, key, seed)
    log(f"advisor: {rec.n_per_class:g} training images in the smallest class, similarity {similarity:.2f} -> "
        f"{rec.quadrant.replace('_', ' & ')}; the textbook's prior: {STRATEGY_LABELS[rec.strategy]}")
    pre = _preprocessing(backbone, crop)
    views = backbone_pass(model, pre, data.samples, key, cache, cut=split_below_top(model, 2), progress=progress)
    log(f"{backbone} features of {len(data.samples)} images and their mirror images: "
        + ("loaded from the cache" if views.hit else f"{views.seconds:.1f} s"))
    parts = {p: data.indices(p) for p in ("train", "val", "test")}
    near = _drop_near_copies(data, views, parts)
    log(f"{len(near)} near-duplicate pair(s) between test and training images (cosine >= {NEAR_DUPLICATE}); "
        f"test set: {len(parts['test'])} images")
    y = torch.tensor([label for _, label in data.samples])
    run = _Runner(log, saved, budget)
    run.stage("probes", 0.0, lambda: probe_candidates(backbone, views, y, parts, seed=seed))
    # an epoch: forward and backward (about 3 forwards) of the top stages on the training images
    ft_cost = FT_EPOCHS * 3 * views.top_seconds * len(parts["train"]) / (2 * len(data.samples))
    run.stage("top-stage fine-tune", ft_cost,
              lambda: top_stage_finetune(backbone, views, y, parts, len(data.classes), seed=seed, progress=progress))
    for name in larger:
        big, big_pre = build_backbone(name), _preprocessing(name, crop)
        cost = 0.0 if pass_is_cached(big, big_pre, key, cache) else RELATIVE_COST.get(name, 2.0) * views.seconds
        run.stage(f"{name} probes", cost, lambda name=name, big=big, big_pre=big_pre: probe_candidates(
            name, backbone_pass(big, big_pre, data.samples, key, cache, progress=progress), y, parts, seed=seed))
    ft_full = 3 * 3 * views.seconds * len(parts["train"]) / len(data.samples)
    if full_ft != "never":
        run.stage("full fine-tune", 0.0 if full_ft == "always" else ft_full,
                  lambda: [full_finetune(backbone, pre, data.samples, parts, len(data.classes), seed=seed,
                                         progress=progress)])
    return finish(data=data, parts=parts, candidates=run.candidates, skipped=run.skipped, rec=rec,
                  similarity=similarity, near=near, out=out, pre_of=lambda b: _preprocessing(b, crop), log=log,
                  budget=budget, export_model=export, run_key=key)


class _Runner:
    """Runs candidate stages in order while the budget lasts; saves each stage's results at once."""

    def __init__(self, log: _Log, saved: Path, budget: float) -> None:
        self.log, self.saved, self.budget = log, saved, budget
        self.candidates: list[Candidate] = []
        self.skipped: list[dict[str, Any]] = []

    def stage(self, name: str, estimate: float, make: Callable[[], list[Candidate]]) -> None:
        path = self.saved / (name.replace(" ", "-") + ".pt")
        found = _load_candidates(path)
        if found is not None:
            self.candidates += found
            self.log(f"{name}: resumed {len(found)} finished candidate(s) from {path.parent.name}/")
            return
        left = self.budget - RESERVE - self.log.elapsed()
        if self.candidates and estimate > left:
            self.skipped.append({"stage": name, "estimated_seconds": round(estimate, 1), "left_seconds": round(left, 1)})
            self.log(f"{name}: skipped, estimated {estimate:.0f} s but {max(left, 0):.0f} s of the budget left")
            return
        start = time.perf_counter()
        found = make()
        _store(found, path)
        self.candidates += found
        self.log(f"{name}: {len(found)} candidate(s) in {time.perf_counter() - start:.1f} s")
