"""The dataset size x similarity decision matrix, measured: five ways to reuse a backbone, compared.

Every transfer-learning tutorial recites a 2x2 matrix (small or large dataset, similar to the
pretraining data or not) with one piece of advice per quadrant. This module runs the strategies
the advice chooses between, so notebook 04 can check the advice on real data:

==============  =============================================================================
strategy        what trains
==============  =============================================================================
probe_last      a logistic regression on the final pooled features (backbone frozen)
probe_early     a logistic regression on an earlier stage's pooled features (backbone frozen)
partial_ft      the deepest few stages + a new head, at a low backbone learning rate
full_ft         the whole pretrained network + a new head, at a low backbone learning rate
scratch         the same architecture from random weights (the baseline: what pretraining buys)
==============  =============================================================================

The experiment itself runs in :mod:`tlcourse.experiments.matrix_reference` (notebook 04's live run and the
reference script): probes on cached features, and the three trained strategies through
:func:`tlcourse.recipes.train`. This module holds the results: plain rows
(``quadrant, strategy, seed, accuracy, ...``) saved as JSON and CSV, summarised over seeds with
intervals, compared with the textbook's advice, and turned into rows for figures (:func:`difference_rows`, :func:`shift_rows`) without training
anything.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from tlcourse import evaluation
from tlcourse._io import read_json, read_or_explain
from tlcourse.data import datasets
from tlcourse.experiments import matrix_reference as mr
from tlcourse.experiments import results_file
from tlcourse.experiments.reference_runs import csv_text, write_result
from tlcourse.strategies import (
    QUADRANTS,
    STRATEGIES,
    STRATEGY_LABELS,
    TEXTBOOK,
    TRAINED,
)

__all__ = [
    "CHANCE",
    "PHOTOS",
    "QUADRANTS",
    "STRATEGIES",
    "STRATEGY_LABELS",
    "TEXTBOOK",
    "load_results",
    "save_results",
    "capped_runs",
    "course_datasets",
    "difference_rows",
    "interval_rows",
    "is_collapsed",
    "measure",
    "shift_rows",
    "summarize",
    "textbook_verdict",
    "winners",
]

# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Results: rows -> summary -> winners, saved and loaded
# --------------------------------------------------------------------------------------------


#: Chance accuracy of the decision matrix's tasks: two classes, balanced test sets.
CHANCE = 0.5


#: The photo sets among :func:`course_datasets` (the other three are scans).
PHOTOS = ("alien-vs-predator", "cifar10")


def course_datasets() -> dict[str, Dataset]:
    """The training splits of the five course datasets the similarity score is calibrated and
    checked on (:data:`tlcourse.experiments.advisor.CALIBRATION_SETS` and ``CHECK_SETS``): two photo sets (:data:`PHOTOS`)
    and three scan sets. Brain MRI's empty placeholder files are skipped quietly (notebook 01
    reports them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"alien-vs-predator": datasets.course_dataset("alien-vs-predator", "train"),
                "cifar10": datasets.cifar10("train"),
                "brain-mri": datasets.course_dataset("brain-mri"),
                "breastmnist": datasets.medmnist("breastmnist", "train"),
                "pneumoniamnist": datasets.medmnist("pneumoniamnist", "train")}


def is_collapsed(row: Mapping[str, Any]) -> bool:
    """True for a run that predicts one class for everything: a recipe that failed to train.

    A row that says so (``collapsed``, from :func:`tlcourse.recipes.train`) decides; an older row
    that does not is collapsed when its test accuracy is within half a point of chance. Such a
    run is counted and reported, never scored as an accuracy or used in a verdict.
    """
    if row.get("collapsed") is not None:
        return bool(row["collapsed"])
    return abs(float(row["accuracy"]) - CHANCE) < 0.005


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{quadrant: {strategy: {"mean", "std", "low", "high", "n", "values", "val_mean", "collapsed"}}}``.

    Collapsed runs (:func:`is_collapsed`) are left out of every number and counted in
    ``collapsed``; a strategy whose every run collapsed has ``n == 0`` and NaN statistics.
    ``std`` is the sample standard deviation over seeds and ``low``/``high`` the 95% Student t
    interval of the mean (:func:`tlcourse.evaluation.seeds_ci`), NaN below
    :data:`tlcourse.evaluation.MIN_SEEDS` seeds. ``val_mean`` is the mean validation accuracy,
    what a choice between strategies is made on. The test set is the same for every seed, so the
    intervals hold the seed-to-seed variation only, not the noise of a finite test set.
    """
    grouped: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for row in rows:
        grouped.setdefault(row["quadrant"], {}).setdefault(row["strategy"], []).append(row)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for quadrant in [q for q in QUADRANTS if q in grouped] + [q for q in grouped if q not in QUADRANTS]:
        out[quadrant] = {}
        by_strategy = grouped[quadrant]
        for strategy in [s for s in STRATEGIES if s in by_strategy] + [s for s in by_strategy if s not in STRATEGIES]:
            scored = [r for r in by_strategy[strategy] if not is_collapsed(r)]
            values = [float(r["accuracy"]) for r in scored]
            vals = [float(r["val_accuracy"]) for r in scored if r.get("val_accuracy") is not None]
            est = evaluation.seeds_ci(values) if values else None
            nan = math.nan
            out[quadrant][strategy] = {
                "mean": est.value if est else nan, "std": est.std if est else nan, "low": est.low if est else nan,
                "high": est.high if est else nan, "n": len(values), "values": values,
                "val_mean": float(np.mean(vals)) if vals else nan,
                "collapsed": len(by_strategy[strategy]) - len(scored)}
    return out


def _scored(table: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The strategies with enough scored seeds for an interval."""
    return [s for s, m in table.items() if len(m["values"]) >= evaluation.MIN_SEEDS]


def winners(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, str]:
    """The strategy with the highest mean accuracy in each quadrant (first in STRATEGIES order on a tie)."""
    return {q: max((s for s in table if table[s]["n"]), key=lambda s: (table[s]["mean"],
                                                                         -STRATEGIES.index(s) if s in STRATEGIES else 0))
            for q, table in summary.items()}


def textbook_verdict(quadrant: str, table: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    """``(outcome, sentence)``: the textbook's choice against the best of the others.

    Where the textbook names two strategies, the one with the higher *validation* mean speaks for
    it (choosing by test would give the textbook two draws on the test set). Strategies with fewer
    than :data:`tlcourse.evaluation.MIN_SEEDS` scored seeds (collapsed runs left out) take no part
    while any strategy has that many; below it no strategy gets an interval or a verdict.

    ``outcome`` is ``"textbook"`` (the textbook's choice wins), ``"tie"`` (ties within noise) or
    ``"other"`` (another strategy wins); the sentence carries the difference in points with its
    95% Welch interval over seeds (:func:`tlcourse.evaluation.seeds_comparison`). A winner needs
    the interval to exclude 0 and p < 0.05, as in every verdict of the course.
    """
    # Strategies with an interval; if none has one, the sentence says so ("one seed, no interval").
    scored = _scored(table) or [s for s in table if table[s]["values"]]
    ours = [s for s in TEXTBOOK[quadrant].strategies if s in scored]
    others = [s for s in scored if s not in TEXTBOOK[quadrant].strategies]
    if not ours or not others:
        return "tie", f"not enough strategies with {evaluation.MIN_SEEDS} or more seeds to compare with the textbook"
    mine = max(ours, key=lambda s: _by_validation(table[s]))
    rival = max(others, key=lambda s: table[s]["mean"])
    with warnings.catch_warnings():  # identical values over seeds: scipy warns, the interval is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        c = evaluation.seeds_comparison(table[mine]["values"], table[rival]["values"])
    sentence = evaluation.verdict(mine, rival, c)
    if evaluation.measurable(c):
        outcome = "textbook" if c.low > 0 else "other"
    else:
        outcome = "tie"
    head = {"textbook": "the textbook's choice wins", "tie": "ties within noise",
            "other": f"another strategy wins ({rival})"}[outcome]
    return outcome, f"{head}: {sentence}"


def _by_validation(m: Mapping[str, Any]) -> float:
    """The validation mean where the rows have one, else the test mean (hand-made tables)."""
    return m["val_mean"] if not math.isnan(m.get("val_mean", math.nan)) else m["mean"]


def difference_rows(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Rows for :func:`tlcourse.plots.forest`: in each quadrant, every other strategy minus the
    quadrant's highest mean, with its 95% Welch interval over seeds and ``measurable``
    (:func:`tlcourse.evaluation.measurable`). Strategies with fewer than
    :data:`tlcourse.evaluation.MIN_SEEDS` scored seeds get no row (their collapsed runs are counted
    in the summary)."""
    rows = []
    for quadrant, table in summary.items():
        scored = _scored(table)
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda s: table[s]["mean"])
        for s in scored:
            if s == best:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                c = evaluation.seeds_comparison(table[s]["values"], table[best]["values"])
            rows.append(dict(label=f"{quadrant}: {s} - {best}", quadrant=quadrant, strategy=s, best=best,
                             value=c.diff, low=c.low, high=c.high, p_value=c.p_value,
                             measurable=evaluation.measurable(c)))
    return rows


def shift_rows(rows: Sequence[Mapping[str, Any]], domain: str) -> list[dict[str, Any]]:
    """Rows for :func:`tlcourse.plots.intervals`: per quadrant and pretrained strategy of
    ``domain``, the mean validation and the mean test accuracy over its scored seeds, each with its
    95% t-interval over seeds; side by side they show a validation-to-test shift."""
    out = []
    summary = summarize([r for r in rows if r.get("domain") == domain and r["strategy"] != "scratch"])
    for quadrant, table in summary.items():
        for s in _scored(table):
            picked = [r for r in rows if r["quadrant"] == quadrant and r["strategy"] == s and not is_collapsed(r)]
            for split, key in (("validation", "val_accuracy"), ("test", "accuracy")):
                e = evaluation.seeds_ci([float(r[key]) for r in picked])
                out.append(dict(label=f"{quadrant}: {s} ({split})", quadrant=quadrant, strategy=s, split=split,
                                value=e.value, low=e.low, high=e.high))
    return out


def capped_runs(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
    """``{(quadrant, strategy): (runs that ran into their epoch cap, runs)}`` for the trained
    strategies: a capped run stopped because ``max_epochs`` ran out, not on a validation plateau,
    so a longer budget might have improved it."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for r in rows:
        if r.get("max_epochs") is None:
            continue
        capped, n = out.get((r["quadrant"], r["strategy"]), (0, 0))
        out[r["quadrant"], r["strategy"]] = (capped + (not r["stopped_on_plateau"]), n + 1)
    return out


def measure(domains: Mapping[str, dict[str, Any]], scale: Any, backbone_lr: Mapping[str, float], *,
            device: Any = None, progress: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the whole matrix on ``domains`` (from :func:`tlcourse.experiments.matrix_reference.load_domain`)
    at ``scale``: activations once per image, then per size, domain and seed a probe on every
    stage (``C`` and stage chosen on validation) and the three trained strategies
    (:func:`tlcourse.recipes.train`, early stopping on validation). Returns ``(rows, stage_rows)``
    in the reference run's format (:func:`save_results`)."""
    from tqdm.auto import tqdm

    for d in domains.values():
        mr.add_activations(d, scale, device=device)
    last = list(next(iter(domains.values()))["pooled"])[-1]
    plan = [(size, domain, seed) for size in ("small", "large") for domain in domains for seed in scale.seeds(size)]
    progress_rows = []
    for size, domain, seed in tqdm(plan, desc="subsets", disable=not progress):
        d, idx = domains[domain], domains[domain]["subsets"][size, seed]
        base = dict(quadrant=f"{size}_{domain}", domain=domain, dataset=d["dataset"], n_per_class=scale.n(size),
                    seed=seed, size=scale.size)
        progress_rows.append(dict(base, kind="stage_probes", seconds=0.0, **mr.run_probes(d, idx, scale, seed)))
        for strategy in TRAINED:
            t0 = time.perf_counter()
            fields = mr.run_trained(strategy, d, idx, size, scale, seed, backbone_lr[domain], device=device)
            progress_rows.append(dict(base, kind="matrix", strategy=strategy, seconds=time.perf_counter() - t0,
                                      **fields))
    return mr.matrix_rows(progress_rows, last)


def interval_rows(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, str]]:
    """One row per quadrant, one column per strategy: "mean (low to high)" in percent.

    The interval is the 95% t-interval over seeds (:func:`tlcourse.evaluation.seeds_ci`), clipped to
    0-100% (with two or three seeds it can reach past them); one seed shows its value alone. Ready
    for :func:`tlcourse.tables.table`.
    """
    rows = []
    for quadrant, table in summary.items():
        row = {"quadrant": quadrant}
        for s in STRATEGIES:
            m = table.get(s)
            if m is None:
                row[s] = "-"
            elif math.isnan(m["low"]):
                row[s] = f"{100 * m['mean']:.1f}"
            else:
                low, high = max(0.0, m["low"]), min(1.0, m["high"])
                row[s] = f"{100 * m['mean']:.1f} ({100 * low:.1f} to {100 * high:.1f})"
        rows.append(row)
    return rows


_CSV_FIELDS = ("quadrant", "domain", "dataset", "n_per_class", "strategy", "seed", "accuracy", "n_test", "epochs_used",
               "stopped_on_plateau", "val_accuracy", "seconds")


def save_results(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                 meta: Mapping[str, Any] | None = None, *,
                 extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``path`` (JSON: ``{"meta", "rows"}`` plus the keys of ``extra``) and the rows as CSV next to it.

    Both files are replaced atomically (:func:`~tlcourse.experiments.reference_runs.write_result`, which makes
    the folder if it is missing). Returns ``(json_path, csv_path)``.
    """
    path = Path(path)
    doc = {"meta": dict(meta or {}), "rows": [dict(r) for r in rows], **dict(extra or {})}
    return path, write_result(path, doc, csv_text(rows, _CSV_FIELDS))


def load_results(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"meta": ..., "rows": [...]}`` as written by :func:`save_results`; without ``path``, the
    committed reference run (package data, ``04_decision_matrix_reference.json``).

    A damaged file, or a JSON file of another kind, raises :class:`tlcourse._io.DamagedFileError`
    naming the file and what to do.
    """
    if path is None:
        path = results_file("04_decision_matrix_reference.json")
    return read_or_explain(
        Path(path), read_json, what="decision-matrix results file",
        remedy="Delete it and run the measurement again (or restore the reference copy from git).",
        check=lambda d: None if isinstance(d, dict) and isinstance(d.get("rows"), list) else "no 'rows' list")


# --------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------

WIN_COLOR = "tab:orange"
BAR_COLOR = "tab:blue"
SCRATCH_COLOR = "0.6"


