"""``fit_folder(FOLDER, out)``: from a learner's image folder to a chosen, tested and exported model.

The steps, each announced with a line (and a progress bar where it takes a while):

0. refuse arguments that cannot work, saying what is allowed (:func:`check_arguments`), and
   create the output folder with its marker, before anything is read;
1. read the folder, refuse what cannot work, drop duplicates, carve the splits (:mod:`.scan`);
2. place the data on the size x similarity matrix and state the textbook's prior
   (:mod:`tlcourse.experiments.advisor`);
3. one cached pass of the main backbone over every image and its mirror image
   (:mod:`.activations`); near-duplicates of training images leave the test set;
4. the candidates, cheapest first, while the budget lasts (:mod:`.candidates`); each finished
   candidate is saved at once, so an interrupted run resumes where it stopped;
5. the choice on validation, the test set once, the paired difference to the prior's strategy;
6. export and checks in fresh processes (:mod:`.deploy`), then ``report.json`` and
   ``report.html`` (:mod:`.report`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import numbers
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tlcourse._io import DamagedFileError, atomic_save, atomic_write_text, make_folder, read_or_explain, read_torch
from tlcourse.experiments.advisor import recommend, similarity_score
from tlcourse.experiments.own_data.activations import ImageFiles, Views, backbone_pass, pass_is_cached
from tlcourse.experiments.own_data.candidates import (
    FT_EPOCHS,
    Candidate,
    full_finetune,
    probe_candidates,
    top_stage_finetune,
)
from tlcourse.experiments.own_data.report import FitReport, finish
from tlcourse.experiments.own_data.scan import (
    FIT_MARKER,
    FolderRefused,
    UserData,
    check_folder,
    is_fit_output,
    read_folder,
)
from tlcourse.features import NEAR_DUPLICATE, near_duplicates
from tlcourse.features.extract import bound_heap
from tlcourse.models import BACKBONES, DEFAULT_BACKBONE, Preprocessing, backbone_spec, build_backbone
from tlcourse.paths import shown
from tlcourse.runtime import select_device
from tlcourse.stages import split_below_top
from tlcourse.strategies import STRATEGY_LABELS

__all__ = ["CLI_NAMES", "DEFAULT_BUDGET", "LARGER", "MAX_CROP", "NEAR_DUPLICATE", "BadArgument", "check_arguments", "fit_folder"]

#: fit's default budget in seconds: on a quiet 2-core CPU a 400-image folder then ends within a minute,
#: process start included (the main backbone's probes and top-stage fine-tune; larger backbones and
#: the full fine-tune when a larger budget is given).
DEFAULT_BUDGET = 60.0
#: The larger offline backbones tried after the main one, cheapest first.
LARGER = ("efficientnet_lite1", "efficientnet_lite2")
#: Cost of a backbone's pass relative to Lite0's, measured on a 2-core CPU (for the budget only).
RELATIVE_COST = {"efficientnet_lite0": 1.0, "efficientnet_lite1": 1.4, "efficientnet_lite2": 2.0}
#: The main backbone's probes take about this share of its pass, at least PROBE_SECONDS: both grow
#: with the folder and slow down together on a busy machine (the probes' and the pass's seconds in
#: the logs of ``python -m benchmarks.fit_memory``; for the announcement only).
PROBE_SHARE, PROBE_SECONDS = 0.15, 5.0
#: Seconds kept back for testing, export, the fresh-process checks and the report (measured 21-39 s
#: for Alien vs Predator on a busy 2-core CPU; the budget is a target, not a hard stop).
RESERVE = 30.0
#: The largest input size: the weights were trained at 224-260 px, and 1024 px has 21x the pixels of
#: 224 px, so each image costs about that much more time.
MAX_CROP = 1024
#: Seeds numpy, scikit-learn and torch all accept.
MAX_SEED = 2**32 - 1
#: How the command line spells fit's parameters, for its error messages.
CLI_NAMES = {"folder": "FOLDER", "out": "--out", "budget": "--budget", "backbone": "--backbone",
             "larger": "--larger", "seed": "--seed", "crop": "--crop", "full_ft": "--full-ft"}
FULL_FT = ("auto", "always", "never")


class BadArgument(ValueError):
    """An argument of ``fit`` that cannot work; the message says what is allowed."""


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_arguments(folder: str | os.PathLike[str], out: str | os.PathLike[str], *, budget: Any, backbone: Any,
                    larger: Sequence[str], seed: Any, crop: Any, full_ft: Any,
                    names: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Refuse arguments that cannot work, saying what is allowed; returns ``larger`` without repeats.

    Runs before anything is read or built. ``names`` spells the parameters in the messages (the
    command line passes :data:`CLI_NAMES`); values may be of any type, so that ``"abc"`` or ``1.5``
    given for a seed gets the same message as ``-1``.
    """
    def name(key: str) -> str:
        return (names or {}).get(key, key)

    def refuse(key: str, allowed: str, got: Any) -> BadArgument:
        return BadArgument(f"{name(key)} must be {allowed}; got {got!r}.")

    known = ", ".join(BACKBONES)
    larger = [larger] if isinstance(larger, str) else list(larger)
    for key, given in (("backbone", [backbone]), ("larger", larger)):
        unknown = [b for b in given if b not in BACKBONES]
        if unknown:
            raise BadArgument(f"{name(key)}: {', '.join(map(repr, unknown))} is not a backbone this course knows; "
                              f"choose from {known}.")
    if not isinstance(budget, numbers.Real) or isinstance(budget, bool) or not math.isfinite(budget) or budget <= 0:
        raise refuse("budget", "a number of seconds above 0, e.g. 120 (candidates that would not fit are skipped)",
                     budget)
    if not _whole(seed) or not 0 <= seed <= MAX_SEED:
        raise refuse("seed", f"a whole number from 0 to {MAX_SEED}, e.g. 0 or 42", seed)
    if crop is not None:
        used = [backbone_spec(b) for b in (backbone, *larger)]
        low = max(used, key=lambda spec: spec.min_input)
        if not _whole(crop) or not low.min_input <= crop <= MAX_CROP:
            raise refuse("crop", f"a whole number of pixels from {low.min_input} to {MAX_CROP} ({low.name} shrinks "
                         f"images {low.min_input}-fold, so a smaller input leaves nothing of the image), or left out "
                         f"for the weights' own size ({used[0].preprocessing().crop} px for {backbone})", crop)
    if full_ft not in FULL_FT:
        raise refuse("full_ft", " or ".join(map(repr, FULL_FT)), full_ft)
    _check_out(check_folder(Path(folder).expanduser().resolve()), Path(out).expanduser().resolve(), name("out"))
    return tuple(dict.fromkeys(b for b in larger if b != backbone))


def _check_out(root: Path, out: Path, flag: str) -> None:
    """Refuse an output folder that is FOLDER itself, or that holds files ``fit`` did not write."""
    if out == root:
        raise BadArgument(f"{flag} {out} is FOLDER itself: fit would write its cache/ and candidates/ folders among "
                          f"your class folders. Pass another folder, e.g. {flag} {root.parent / (root.name + '-fit')} "
                          "(the command line's default).")
    if not out.is_dir() or is_fit_output(out) or (out / "candidates").is_dir():  # candidates/: a run before the marker
        return
    theirs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if theirs:
        inside = " It is inside FOLDER, where it would be read as a class." if root in out.parents else ""
        raise BadArgument(
            f"{flag} {out} already holds files that fit did not write ({', '.join(theirs[:3])}"
            f"{', ...' if len(theirs) > 3 else ''}); fit writes report.json, report.html, model.pt, model.onnx, cache/ "
            f"and candidates/ there and would replace files of those names.{inside} Pass a new or empty folder.")


def _make_out(out: Path) -> bool:
    """Create the output folder and its marker (so no scan reads it as data); True when it is new."""
    new = not out.exists()
    make_folder(out, remedy="Pass another output folder, one you can write to (--out DIR on the command line, "
                            "out= in Python).")
    if not (out / FIT_MARKER).is_file():
        atomic_write_text(out / FIT_MARKER, "Written by tlcourse fit: its report, model and caches. "
                                            "fit never reads this folder as images.\n")
    return new


class _Log:
    """Prints a line per decision, stamped with the seconds since the start, and keeps them."""

    def __init__(self, echo: Callable[[str], Any] | None, started: float | None = None) -> None:
        before = max(0.0, time.time() - started) if started is not None else 0.0  # e.g. the process's start-up
        self.start, self.lines, self.echo = time.perf_counter() - before, [], echo

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


def fit_folder(folder: str | os.PathLike[str], out: str | os.PathLike[str], *, budget: float = DEFAULT_BUDGET,
               backbone: str = DEFAULT_BACKBONE, larger: Sequence[str] = LARGER, seed: int = 0, crop: int | None = None,
               full_ft: str = "auto", export: bool = True, progress: bool = True, rescore_test: bool = False,
               echo: Callable[[str], Any] | None = print, device: str | torch.device | None = None,
               started: float | None = None) -> FitReport:
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
        rescore_test: allow a new choice to score a test set an earlier call already scored (a
            second look, said in the report); without it that raises ``TestAlreadyScored``.
        echo: called with each decision line (``None``: silent).
        device: where the backbone passes and the fine-tunes run (``None``/``"auto"``: the GPU when
            there is one, else the CPU; see :func:`tlcourse.runtime.select_device`).
        started: when the run began, in ``time.time()`` seconds (default: now). The command line
            passes its process's start, so the budget, the announced length and the log's clock
            count the imports too.

    Raises :class:`BadArgument` or :class:`~tlcourse.experiments.own_data.scan.FolderRefused` (both ``ValueError``)
    before anything is built, saying what to do; an output folder that cannot be created raises the
    course's :class:`~tlcourse._io.DiskWriteError`.
    """
    larger = check_arguments(folder, out, budget=budget, backbone=backbone, larger=larger, seed=seed, crop=crop,
                             full_ft=full_ft)
    log = _Log(echo, started)
    bound_heap()  # the passes' per-batch buffers go back to the system when freed: memory stays flat
    out = Path(out).expanduser().resolve()
    new = _make_out(out)
    device = select_device(device)
    log(f"reading {shown(folder)} (device: {device})")
    try:
        data = read_folder(folder, seed=seed)
    except FolderRefused:
        if new:  # leave nothing behind for a refused folder
            with contextlib.suppress(OSError):
                (out / FIT_MARKER).unlink()
                out.rmdir()
        raise
    if data.fit_outputs:
        log(f"left out fit's own output folder(s) inside the folder: {', '.join(shown(p) for p in data.fit_outputs)}")
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
    run = _Runner(log, saved, budget)
    views = backbone_pass(model, pre, data.samples, key, cache, cut=split_below_top(model, 2), progress=progress,
                          device=device, on_rate=lambda rate: run.announce_pass(backbone, rate, len(data.samples)))
    log(f"{backbone} features of {len(data.samples)} images and their mirror images: "
        + ("loaded from the cache" if views.hit else f"{views.seconds:.1f} s"))
    parts = {p: data.indices(p) for p in ("train", "val", "test")}
    near = _drop_near_copies(data, views, parts)
    log(f"{len(near)} near-duplicate pair(s) between test and training images (cosine >= {NEAR_DUPLICATE}); "
        f"test set: {len(parts['test'])} images")
    if not parts["test"]:
        raise FolderRefused(
            f"Nothing is left to test on: each of the {len(data.indices('test'))} test image(s) is a near-copy of a "
            f"training or validation image (cosine similarity of their features >= {NEAR_DUPLICATE}), and a copy "
            "tests nothing new. Add photos that differ more (other scenes, other days, other objects of each class).")
    y = torch.tensor([label for _, label in data.samples])
    run.stage("probes", 0.0, lambda: probe_candidates(backbone, views, y, parts, seed=seed))
    # an epoch: forward and backward (about 3 forwards) of the top stages on the training images
    ft_cost = FT_EPOCHS * 3 * views.top_seconds * len(parts["train"]) / (2 * len(data.samples))
    run.stage("top-stage fine-tune", ft_cost,
              lambda: top_stage_finetune(backbone, views, y, parts, len(data.classes), seed=seed, progress=progress,
                                         device=device, deadline=run.deadline()))
    for name in larger:
        if run.cheapest_only:  # skipped without building the backbone
            run.stage(f"{name} probes", RELATIVE_COST.get(name, 2.0) * views.seconds, list)
            continue
        big, big_pre = build_backbone(name), _preprocessing(name, crop)
        cost = 0.0 if pass_is_cached(big, big_pre, key, cache) else RELATIVE_COST.get(name, 2.0) * views.seconds
        run.stage(f"{name} probes", cost, lambda name=name, big=big, big_pre=big_pre: probe_candidates(
            name, backbone_pass(big, big_pre, data.samples, key, cache, progress=progress, device=device), y, parts,
            seed=seed))
    ft_full = 3 * 3 * views.seconds * len(parts["train"]) / len(data.samples)
    if full_ft != "never":
        run.stage("full fine-tune", 0.0 if full_ft == "always" else ft_full,
                  lambda: [full_finetune(backbone, pre, data.samples, parts, len(data.classes), seed=seed,
                                         progress=progress, device=device,
                                         deadline=None if full_ft == "always" else run.deadline())])
    return finish(data=data, parts=parts, candidates=run.candidates, skipped=run.skipped, rec=rec,
                  similarity=similarity, near=near, out=out, pre_of=lambda b: _preprocessing(b, crop), log=log,
                  budget=budget, announced=run.announced, export_model=export, run_key=key,
                  rescore_test=rescore_test)


class _Runner:
    """Runs candidate stages in order while the budget lasts; saves each stage's results at once."""

    def __init__(self, log: _Log, saved: Path, budget: float) -> None:
        self.log, self.saved, self.budget = log, saved, budget
        self.candidates: list[Candidate] = []
        self.skipped: list[dict[str, Any]] = []
        self.cheapest_only = False  # the main pass alone exceeds the budget: only its probes run
        self.announced: float | None = None  # the run's length announced before the main pass

    def announce_pass(self, backbone: str, seconds_per_image: float, n_images: int) -> None:
        """Log how long the main pass will take (from its first timed batch) and the run's expected
        length; when the pass alone exceeds the budget, say so and the budget this folder needs."""
        estimate = seconds_per_image * n_images
        end = self.log.elapsed() + estimate + max(PROBE_SECONDS, PROBE_SHARE * estimate) + RESERVE
        self.announced = max(end, self.budget)
        self.log(f"{backbone} pass over {n_images} images and their mirror images: about {estimate:.0f} s "
                 f"(timed on its first batches); this run: about {self.announced:.0f} s")
        if end > self.budget:
            self.cheapest_only = True
            self.log(f"the pass alone does not fit the budget of {self.budget:g} s: this folder needs --budget "
                     f"{math.ceil(end)} or more for the probes and more for the other candidates; "
                     f"only the cheapest candidates ({backbone} probes) run")

    def deadline(self) -> float:
        """When a fine-tune must end (``time.perf_counter()``): the budget less the reserve for the
        test, export and report; its epochs stop there (:class:`tlcourse.train.Deadline`)."""
        return self.log.start + self.budget - RESERVE

    def stage(self, name: str, estimate: float, make: Callable[[], list[Candidate]]) -> None:
        path = self.saved / (name.replace(" ", "-") + ".pt")
        found = _load_candidates(path)
        if found is not None:
            self.candidates += found
            self.log(f"{name}: resumed {len(found)} finished candidate(s) from {path.parent.name}/")
            return
        left = self.budget - RESERVE - self.log.elapsed()
        if self.candidates and (estimate > left or self.cheapest_only):
            needed = math.ceil(self.log.elapsed() + estimate + RESERVE)
            self.skipped.append({"stage": name, "estimated_seconds": round(estimate, 1), "left_seconds": round(left, 1),
                                 "budget_needed": needed})
            self.log(f"{name}: skipped, estimated {estimate:.0f} s but {max(left, 0):.0f} s of the budget left "
                     f"(--budget {needed} would run it)")
            return
        start = time.perf_counter()
        found = make()
        _store(found, path)
        self.candidates += found
        self.log(f"{name}: {len(found)} candidate(s) in {time.perf_counter() - start:.1f} s")
