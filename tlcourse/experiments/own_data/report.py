"""Steps 5-6 of ``fit``: choose on validation, test once, export, and write the report.

:func:`finish` picks the candidate with the highest validation accuracy (the simplest one among
those the validation split cannot separate: :func:`_choose`), scores it once on the test set with its Wilson interval and
per-class accuracy, and compares it, paired on the same test images, with the best validation
candidate of the textbook's strategy. After that choice, every candidate's stored test
predictions are scored for the record ("hindsight"): they show whether the choice on validation
landed within the interval of the best candidate, and cannot change the choice any more.

A test set too small to mean anything (fewer than :data:`MIN_TEST` images, or a 95% interval
wider than :data:`MAX_CI_WIDTH`) is said so in the log, in ``report.json`` ("warnings") and at the
top of ``report.html``, with the number of test images that would make the result meaningful.

``report.json`` holds the facts; ``report.html`` is one self-contained file (figures inlined as
base64 PNG) that opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from tlcourse._io import atomic_write_text
from tlcourse.data import load_rgb
from tlcourse.evaluation import Estimate, accuracy_ci, compare, describe, paired_comparison
from tlcourse.experiments.advisor import Recommendation
from tlcourse.experiments.own_data.candidates import Candidate
from tlcourse.experiments.own_data.deploy import deployed_model, export
from tlcourse.experiments.own_data.scan import TEST_FRACTION, UserData
from tlcourse.explain import gradcam, gradcam_grid
from tlcourse.inference import StageProbe, predict_proba
from tlcourse.models import Preprocessing
from tlcourse.paths import shown
from tlcourse.plots import confusion_matrix, denormalize, image_grid
from tlcourse.strategies import STRATEGY_LABELS

__all__ = ["MAX_CI_WIDTH", "MIN_TEST", "FitReport", "TestAlreadyScored", "finish", "needed_test_images", "small_test_set_warning"]

#: Below this many test images an accuracy says little, whatever its interval.
MIN_TEST = 30
#: A 95% interval wider than this (30 points) cannot tell candidates a few points apart.
MAX_CI_WIDTH = 0.30


@dataclass
class FitReport:
    """What ``fit`` found and chose; ``report.json`` holds the same fields."""

    strategy: str  # the chosen candidate's strategy (a tlcourse.strategies key)
    chosen: str  # the chosen candidate's name
    test_accuracy: float
    test_accuracy_ci: list[float]
    n_test: int
    seconds: float
    prior_strategy: str
    prior_candidate: str | None
    versus_prior: dict[str, Any]
    candidates: list[dict[str, Any]]
    per_class_accuracy: dict[str, float | None]
    similarity: float
    quadrant: str
    split: dict[str, dict[str, int]]
    skipped_stages: list[dict[str, Any]]
    duplicates: dict[str, Any]
    bad_files: list[str]
    hindsight: dict[str, Any]
    export: dict[str, Any]
    decisions: list[str]
    out: str
    tta: bool = False
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict, repr=False)  # base64 PNG, as in report.html

    def as_dict(self) -> dict[str, Any]:
        """Everything but the figures (report.json)."""
        return {k: v for k, v in asdict(self).items() if k != "figures"}

    def figure_png(self, key: str) -> bytes:
        """A figure of the report as PNG bytes: "confusion", "misclassified", "gradcam", "duplicates"."""
        if key not in self.figures:
            raise KeyError(f"the report has no {key!r} figure; it has {sorted(self.figures)}")
        return base64.b64decode(self.figures[key])

    def candidate_table(self) -> list[dict[str, Any]]:
        """The candidates as table rows: validation accuracy with its interval, and seconds."""
        return [{"candidate": c["name"], "strategy": c["strategy"], "val acc": f"{c['val_accuracy']:.1%}",
                 "95% CI": f"{c['val_accuracy_ci'][0]:.1%} to {c['val_accuracy_ci'][1]:.1%}",
                 "seconds": c["seconds"], "chosen": "<-" if c["name"] == self.chosen else ""} for c in self.candidates]

    def __str__(self) -> str:
        lo, hi = self.test_accuracy_ci
        return (f"chosen: {self.chosen} ({STRATEGY_LABELS.get(self.strategy, self.strategy)})\n"
                f"test accuracy {self.test_accuracy:.1%} (95% CI {lo:.1%} to {hi:.1%}, n={self.n_test}); "
                f"{self.seconds:.0f} s\ntextbook prior: {STRATEGY_LABELS.get(self.prior_strategy, self.prior_strategy)}; "
                f"{self.versus_prior.get('verdict', '')}" + "".join(f"\nwarning: {w}" for w in self.warnings))


def needed_test_images(accuracy: float) -> int:
    """The fewest test images (at least :data:`MIN_TEST`) whose 95% Wilson interval at ``accuracy``
    is at most :data:`MAX_CI_WIDTH` wide (39 at 50%, 30 at 90% and above)."""
    n = MIN_TEST
    while True:  # the width shrinks like 1/sqrt(n): a few dozen steps at most
        ci = accuracy_ci(round(accuracy * n), n)
        if ci.high - ci.low <= MAX_CI_WIDTH:
            return n
        n += 1


def small_test_set_warning(acc: Estimate, data: UserData, near_copies: int) -> str | None:
    """What to tell a learner whose test set is too small to mean anything, or None."""
    width = acc.high - acc.low
    if acc.n >= MIN_TEST and width <= MAX_CI_WIDTH:
        return None
    need = needed_test_images(acc.value)
    where = (f"about {math.ceil(need / TEST_FRACTION)} different images in all, as {TEST_FRACTION:.0%} of a folder "
             "without a split is carved for testing" if data.layout == "flat"
             else "put them in the folder used as the test set")
    near = (f" {near_copies} test image(s) were left out as near-copies of training images: near-identical "
            "photos test nothing new." if near_copies else "")
    return (f"the test set is too small to mean much: {acc.n} test image(s) give {acc.value:.1%} with a 95% "
            f"interval from {acc.low:.1%} to {acc.high:.1%} ({100 * width:.0f} points wide), too wide to tell the "
            f"candidates apart. About {need} test images would make it meaningful (an interval at most "
            f"{100 * MAX_CI_WIDTH:.0f} points wide at this accuracy): {where}.{near}")


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _choose(candidates: Sequence[Candidate], y_val: Sequence[int]) -> Candidate:
    """The simplest candidate within one standard error of the best validation accuracy.

    A validation split of a few dozen images cannot rank candidates closer than its standard error,
    so among those it cannot separate from the best, simplicity decides (Breiman's one-standard-error
    rule): the fewest trained weights, then no flip TTA, then no flip augmentation, then the first,
    which ran earlier. Measured seconds would let timing noise choose between two probes of equal
    cost (it did, on a busy CI machine); these keys give the same choice on every run with a seed.
    """
    accuracy = [c.val_accuracy(y_val) for c in candidates]
    best = max(accuracy)
    se = math.sqrt(best * (1 - best) / max(len(y_val), 1))
    close = [c for c, a in zip(candidates, accuracy) if a >= best - se]
    return min(close, key=lambda c: (c.trained_weights(), c.tta, c.flip_augmentation))


def _versus_prior(chosen: Candidate, prior: Candidate | None, y_test: np.ndarray, strategy: str) -> dict[str, Any]:
    label = STRATEGY_LABELS.get(strategy, strategy)
    if prior is None:
        return {"verdict": f"the textbook's strategy ({label}) was not measured within the budget, so there is "
                           "nothing to compare with"}
    if prior is chosen:
        return {"verdict": f"the measured choice is the textbook's strategy ({label})", "diff": 0.0}
    a, b = chosen.test_proba.argmax(1).numpy() == y_test, prior.test_proba.argmax(1).numpy() == y_test
    c = paired_comparison(a, b)
    return {"diff": c.diff, "ci": [c.low, c.high], "p_value": c.p_value, "a_only": c.a_only, "b_only": c.b_only,
            "verdict": compare(f"the chosen model ({chosen.name})", a, f"the textbook's strategy ({prior.name})", b)}


def _hindsight(candidates: Sequence[Candidate], chosen: Candidate, y_test: np.ndarray) -> dict[str, Any]:
    """Every candidate's test accuracy, scored after the choice; the chosen one against the best of them."""
    correct = {c.name: c.test_proba.argmax(1).numpy() == y_test for c in candidates}
    best = max(candidates, key=lambda c: correct[c.name].mean())
    c = paired_comparison(correct[chosen.name], correct[best.name])
    return {"note": "scored after the choice, for the record: never used to choose",
            "test_accuracy": {name: float(v.mean()) for name, v in correct.items()},
            "best_on_test": best.name, "chosen_minus_best": c.diff, "ci": [c.low, c.high],
            "within_interval": bool(c.low <= 0.0 <= c.high) or best is chosen}


def _images(samples: Sequence[tuple[str, int]], idx: Sequence[int], pre: Preprocessing) -> torch.Tensor:
    return torch.stack([pre.eval_transform()(load_rgb(samples[i][0])) for i in idx])


def _thumbs(paths: Sequence[str], titles: Sequence[str]) -> Figure:
    thumbs = []
    for p in paths:
        img = load_rgb(p)
        img.thumbnail((128, 128), Image.Resampling.BICUBIC)
        thumbs.append(img)
    return image_grid(thumbs, titles=titles, ncols=min(4, len(thumbs)))  # two pairs a row


def _figures(model: torch.nn.Module, chosen: Candidate, data: UserData, test: list[int], y_test: np.ndarray,
             pre: Preprocessing, near: list[dict[str, Any]]) -> dict[str, str]:
    """The report's figures as base64 PNG."""
    proba = chosen.test_proba
    pred, conf = proba.argmax(1).numpy(), proba.max(1).values.numpy()
    figs = {"confusion": _png(confusion_matrix(y_test, pred, data.classes, normalize=False))}
    wrong = [k for k in np.flatnonzero(pred != y_test)][:12]
    if wrong:
        x = _images(data.samples, [test[k] for k in wrong], pre)
        titles = [f"{data.classes[pred[k]]} {conf[k]:.0%}\n(true {data.classes[y_test[k]]})" for k in wrong]
        figs["misclassified"] = _png(image_grid(x, titles=titles, mean=pre.mean, std=pre.std, ncols=min(6, len(wrong))))
    right = [k for k in np.argsort(-conf) if pred[k] == y_test[k]][:4]
    shown = right + wrong[:4]
    x = _images(data.samples, [test[k] for k in shown], pre)
    layer = model.lower if isinstance(model, StageProbe) else None
    # Grad-CAM needs the gradient at its layer only (capture makes that activation a leaf that
    # requires grad): with the weights frozen, autograd keeps no activation below it
    model.requires_grad_(False)
    cams, _ = gradcam(model, x, layer=layer)
    figs["gradcam"] = _png(gradcam_grid(denormalize(x, pre.mean, pre.std), cams,
                                        titles=[f"{data.classes[pred[k]]} {conf[k]:.0%}" for k in shown],
                                        colors=["green" if pred[k] == y_test[k] else "red" for k in shown],
                                        ncols=len(shown)))
    pairs = [(g[0], g[1]) for g in data.duplicates[:4]] + [(n["test"], n["train"]) for n in near[:4]]
    if pairs:
        figs["duplicates"] = _png(_thumbs([p for pair in pairs for p in pair],
                                          [Path(p).name[:18] for pair in pairs for p in pair]))
    return figs


def _previous_export(out: Path, run_key: str, chosen: str) -> dict[str, Any] | None:
    """The last run's export facts when it chose the same candidate on the same folder and its files are there."""
    try:
        last = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return None
    exported = last.get("export", {})
    same = last.get("chosen") == chosen and last.get("extra", {}).get("run_key") == run_key and run_key
    files = [exported.get(k) for k in ("bundle", "onnx")]
    if not same or not all(f and Path(f).is_file() for f in files) or "onnx_check" not in exported:
        return None
    return {k: v for k, v in exported.items() if k != "cached_vs_end_to_end_max_diff"}


class TestAlreadyScored(RuntimeError):
    """This folder's test set was scored for another choice: scoring it again is a second look."""


def _second_look(out: Path, run_key: str, chosen: str) -> dict[str, Any] | None:
    """The earlier report of this folder (same run key) when it chose another candidate, else None."""
    try:
        last = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if not run_key or last.get("extra", {}).get("run_key") != run_key or last.get("chosen") in (None, chosen):
        return None
    return last


def _per_class(classes: Sequence[str], y: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    return {c: (float((pred[y == k] == k).mean()) if (y == k).any() else None) for k, c in enumerate(classes)}


def finish(*, data: UserData, parts: dict[str, list[int]], candidates: list[Candidate], skipped: list[dict[str, Any]],
           rec: Recommendation, similarity: float, near: list[dict[str, Any]], out: Path,
           pre_of: Callable[[str], Preprocessing], log: Any, budget: float, announced: float | None = None,
           export_model: bool = True, run_key: str = "", rescore_test: bool = False) -> FitReport:
    """Choose, test once, export, write ``report.json`` and ``report.html``; returns the report.

    ``announced``: the run's length ``fit`` announced before its main pass (None when the pass was
    loaded from the cache); it goes into ``extra`` beside the budget, and the last log line says both.

    A new choice on a folder whose test set an earlier call already scored (a bigger budget ran more
    candidates, say) is a second look at the test set: it raises :class:`TestAlreadyScored` unless
    ``rescore_test``, and then the report says so.
    """
    y = np.array([label for _, label in data.samples])
    y_val, y_test = y[parts["val"]], y[parts["test"]]
    chosen = _choose(candidates, y_val)
    log(f"chosen on validation: {chosen.name}, {describe('validation', accuracy_ci(chosen.val_correct(y_val)))}")
    earlier = _second_look(out, run_key, chosen.name)
    if earlier is not None and not rescore_test:
        raise TestAlreadyScored(
            f"This folder's test set was already scored, for an earlier choice ({earlier['chosen']}: "
            f"{earlier['test_accuracy']:.1%}); this call chose {chosen.name}. Scoring the same test images again "
            "for a new choice is a second look: the new number is no longer an unbiased estimate. Keep the earlier "
            "report, test the new choice on images fit has never seen, or run again with --rescore-test "
            "(rescore_test=True) and the report will say the test set was scored twice.")
    second_look = (f"the test set was scored a second time, for a new choice (earlier: {earlier['chosen']}, "
                   f"{earlier['test_accuracy']:.1%}); read this test accuracy as optimistic") if earlier else None
    same = [c for c in candidates if c.strategy == rec.strategy]
    prior = _choose(same, y_val) if same else None
    correct = chosen.test_proba.argmax(1).numpy() == y_test
    acc = accuracy_ci(correct)
    log(f"test set, once: {describe(chosen.name, acc)}")
    warnings = [w for w in [small_test_set_warning(acc, data, len({n["test"] for n in near})), second_look] if w]
    for warning in warnings:
        log(f"warning: {warning}")
    versus = _versus_prior(chosen, prior, y_test, rec.strategy)
    log(f"against the textbook's prior: {versus['verdict']}")
    hindsight = _hindsight(candidates, chosen, y_test)
    pre = pre_of(chosen.backbone)
    model = deployed_model(chosen, len(data.classes))
    check = parts["val"][:6]
    tta = "hflip" if chosen.tta else "none"
    end_to_end = predict_proba(model, _images(data.samples, check, pre), tta=tta)
    gap = float((end_to_end - chosen.val_proba[:len(check)]).abs().max())
    log(f"the deployed network reproduces the cached route on {len(check)} validation images: max |difference| {gap:.1e}")
    wrong = [parts["test"][k] for k in np.flatnonzero(~correct)][:2]
    files = [data.samples[i][0] for i in parts["test"][:: max(1, len(parts["test"]) // 4)][:4] + wrong]
    meta = {"test_accuracy": acc.value, "candidate": chosen.name, "folder": str(data.root), "backbone": chosen.backbone,
            "stage": chosen.layer}
    exported: dict[str, Any] = {"skipped": "export=False"}
    previous = _previous_export(out, run_key, chosen.name) if export_model else None
    if previous is not None:
        exported = previous
        log("export: the same model as the last run's, already exported and checked; kept")
    elif export_model:
        exported = export(model, out, class_names=data.classes, pre=pre, tta=tta, files=files, meta=meta)
        checks = [exported[k]["same_labels"] for k in ("bundle_check", "onnx_check") if k in exported]
        log(f"exported {', '.join(Path(exported[k]).name for k in ('bundle', 'onnx') if exported.get(k))}; "
            f"fresh-process predictions identical: {all(checks)}")
    exported["cached_vs_end_to_end_max_diff"] = gap
    report = FitReport(
        strategy=chosen.strategy, chosen=chosen.name, test_accuracy=acc.value, test_accuracy_ci=[acc.low, acc.high],
        n_test=acc.n, seconds=0.0, prior_strategy=rec.strategy, prior_candidate=prior.name if prior else None,
        versus_prior=versus, candidates=[c.as_dict(y_val) for c in candidates],
        per_class_accuracy=_per_class(data.classes, y_test, chosen.test_proba.argmax(1).numpy()),
        similarity=similarity, quadrant=rec.quadrant, split=data.counts(), skipped_stages=skipped,
        duplicates={"exact_groups": data.duplicates, "left_out": [list(d) for d in data.dropped], "near_test_train": near},
        bad_files=[f"{b.path}: {b.reason}" for b in data.bad], hindsight=hindsight, export=exported,
        decisions=log.lines, out=str(out), tta=chosen.tta, warnings=warnings,
        extra={"run_key": run_key, "folder": str(data.root), "budget": budget, "announced_seconds": announced,
               "n_per_class": rec.n_per_class, "split_note": data.notes[0]})
    figures = _figures(model, chosen, data, parts["test"], y_test, pre, near)
    report.figures = figures
    report.seconds = log.elapsed()
    promised = f"budget {budget:g} s" + (f", announced {announced:.0f} s" if announced is not None else "")
    log(f"done in {report.seconds:.1f} s ({promised}): {shown(out / 'report.html')}")
    report.decisions = log.lines
    atomic_write_text(out / "report.json", json.dumps(report.as_dict(), indent=2, default=str))
    atomic_write_text(out / "report.html", render_html(report, figures))
    return report


def _table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: FitReport, figures: dict[str, str]) -> str:
    """The report as one HTML file with its figures inlined (no network, no other file)."""
    def img(key: str, caption: str) -> str:
        if key not in figures:
            return f"<p><em>{html.escape(caption)}: none.</em></p>"
        return f"<figure><img alt='{key}' src='data:image/png;base64,{figures[key]}'><figcaption>{html.escape(caption)}</figcaption></figure>"

    lo, hi = report.test_accuracy_ci
    esc = html.escape
    sections = [
        f"<h1>Your own data: {esc(str(report.extra.get('folder', '')))}</h1><p>{esc(str(report.extra.get('split_note', '')))}</p>",
        *(f"<p class='warning'><b>Warning:</b> {esc(w)}</p>" for w in report.warnings),
        f"<p><b>Chosen on validation:</b> {esc(report.chosen)} ({esc(STRATEGY_LABELS.get(report.strategy, report.strategy))}).<br>"
        f"<b>Test accuracy:</b> {report.test_accuracy:.1%} (95% CI {lo:.1%} to {hi:.1%}, n={report.n_test}), measured once.<br>"
        f"<b>Textbook prior:</b> {esc(STRATEGY_LABELS.get(report.prior_strategy, report.prior_strategy))} "
        f"(quadrant {esc(report.quadrant)}, similarity {report.similarity:.2f}); {esc(report.versus_prior['verdict'])}.<br>"
        f"<b>Time:</b> {report.seconds:.0f} s (budget {report.extra.get('budget')} s).</p>",
        "<h2>Candidates (validation)</h2>", _table(report.candidate_table()),
        "<h2>Skipped stages</h2>", _table(report.skipped_stages),
        "<h2>Per-class test accuracy</h2>",
        _table([{"class": k, "accuracy": "-" if v is None else f"{v:.1%}"} for k, v in report.per_class_accuracy.items()]),
        img("confusion", "confusion matrix on the test set (rows: true class, columns: predicted)"),
        img("misclassified", "misclassified test images: predicted class, confidence, true class"),
        img("gradcam", "Grad-CAM of the most confident right answers (green) and of mistakes (red)"),
        img("duplicates", "duplicate pairs: exact copies, then near copies between test and training images"),
        "<h2>Hindsight (after the choice)</h2>",
        _table([{"candidate": k, "test acc": f"{v:.1%}"} for k, v in report.hindsight["test_accuracy"].items()]),
        f"<p>{esc(report.hindsight['note'])}; chosen minus best on test: {100 * report.hindsight['chosen_minus_best']:+.1f} "
        f"points (95% CI {100 * report.hindsight['ci'][0]:+.1f} to {100 * report.hindsight['ci'][1]:+.1f}).</p>",
        "<h2>Decisions</h2><pre>" + esc("\n".join(report.decisions)) + "</pre>",
        "<h2>Model files</h2><pre>" + esc(json.dumps(report.export, indent=2)) + "</pre>",
    ]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}"
             ".warning{background:#fff3cd;border:1px solid #e0b400;padding:6px 10px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>tlcourse fit report</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"

