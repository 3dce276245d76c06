"""The course's findings: each claim about what to do, generated from a committed run's numbers.

A :class:`Finding` has an id, the question, the evidence (which run, at what scale), the effect
with its 95% interval, a verdict under the course's one rule for "measurable", and a "what to do"
sentence written from the numbers, never by hand. The advisor, the notebooks' summaries and the
README quote findings by id (:func:`quote`); the tests recompute every finding from its evidence,
so a quoted sentence cannot drift from the run it cites.

**The one rule.** A difference is *measurable* when its 95% interval excludes zero and its test
agrees (p < 0.05): the rule of :func:`tlcourse.evaluation.verdict`. Otherwise the verdict says
"no measurable difference at this size", which is not the same as "no difference".
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlcourse import evaluation
from tlcourse._io import read_json, read_or_explain
from tlcourse.experiments import decision_matrix, results_file
from tlcourse.strategies import STRATEGY_LABELS, TEXTBOOK, quadrant_title

__all__ = ["EVIDENCE", "Finding", "all_findings", "bf16_findings", "evidence_path", "lr_findings",
           "matrix_findings", "quote"]

#: The committed runs the findings come from.
EVIDENCE = {"matrix": "04_decision_matrix_reference.json", "bf16": "bf16_parity.json"}
#: Chance accuracy of the decision matrix's tasks: two classes, balanced test sets.
CHANCE = 0.5
#: Cheapest first: a tie between two strategies is settled by cost.
COST_ORDER = ("probe_last", "probe_early", "partial_ft", "full_ft", "scratch")


@dataclass(frozen=True)
class Finding:
    """One claim the course makes, with the numbers behind it (effects in percentage points)."""

    id: str
    question: str
    evidence: str  # the run: file, scale, seeds, test images
    effect: float | None  # A minus B, points; None where the run measured no difference
    low: float | None
    high: float | None
    measurable: bool
    verdict: str  # the generated verdict sentence
    do: str  # what to do, generated from the numbers
    choice: str | None = None  # the strategy the finding says to start with, where it names one

    def __str__(self) -> str:
        return f"[{self.id}] {self.do} (evidence: {self.verdict}; {self.evidence})"


def evidence_path(key: str) -> Path:
    """Where the committed run ``key`` of :data:`EVIDENCE` lives (package data)."""
    return results_file(EVIDENCE[key])


def _label(strategy: str) -> str:
    return STRATEGY_LABELS.get(strategy, strategy)


def _points(c: evaluation.SeedComparison) -> tuple[float, float | None, float | None]:
    nan = math.isnan(c.low)
    return round(100 * c.diff, 1), None if nan else round(100 * c.low, 1), None if nan else round(100 * c.high, 1)


def _measurable(c: evaluation.SeedComparison) -> bool:
    """The course's rule (:func:`tlcourse.evaluation.measurable`), from at least 3 seeds a side."""
    return min(c.n_a, c.n_b) >= 3 and evaluation.measurable(c)


def _compare(a: Sequence[float], b: Sequence[float]) -> evaluation.SeedComparison:
    with warnings.catch_warnings():  # identical values over seeds: the interval is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return evaluation.seeds_comparison(a, b)


def matrix_findings(doc: Mapping[str, Any], source: str) -> list[Finding]:
    """Per quadrant of the reference decision matrix: the textbook's choice against the best other
    strategy (``matrix.<quadrant>``), and the best pretrained strategy against training from
    scratch (``scratch.<quadrant>``)."""
    out = []
    for quadrant, table in decision_matrix.summarize(doc["rows"]).items():
        first = next(r for r in doc["rows"] if r["quadrant"] == quadrant)
        seeds = max(m["n"] for m in table.values())
        scale = (f"{source}: {first.get('dataset')}, {first.get('n_per_class')} images/class, {seeds} seeds, "
                 f"test n={first.get('n_test')}")
        ours = max((s for s in TEXTBOOK[quadrant].strategies if s in table), key=lambda s: table[s]["mean"])
        rival = max((s for s in table if s not in TEXTBOOK[quadrant].strategies and s != "scratch"),
                    key=lambda s: table[s]["mean"])
        c = _compare(table[ours]["values"], table[rival]["values"])
        where = f"For {quadrant_title(quadrant)} data ({first.get('n_per_class')} images/class)"
        if _measurable(c) and c.diff > 0:
            choice = ours
            do = f"{where}, use {_label(ours)}, the textbook's choice: it beat {_label(rival)} by {100 * c.diff:.1f} points."
        elif _measurable(c):
            choice = rival
            do = (f"{where}, prefer {_label(rival)}: it beat the textbook's {_label(ours)} by "
                  f"{-100 * c.diff:.1f} points.")
        else:
            choice = min((ours, rival), key=COST_ORDER.index)
            do = (f"{where}, {_label(ours)} and {_label(rival)} are within noise of each other; start with the "
                  f"cheaper, {_label(choice)}.")
        out.append(Finding(f"matrix.{quadrant}", f"In the {quadrant_title(quadrant)} quadrant, is the textbook's "
                           f"{_label(ours)} at least as good as the best other strategy ({_label(rival)})?",
                           scale, *_points(c), _measurable(c), evaluation.verdict(ours, rival, c), do, choice))
        if "scratch" in table:
            out.append(_scratch_finding(quadrant, table, scale, where))
    return out


def _scratch_finding(quadrant: str, table: Mapping[str, Mapping[str, Any]], scale: str, where: str) -> Finding:
    """Pretrained against scratch. A scratch run at chance (it predicts one class of the two-class,
    balanced task) is a recipe that failed to train: it is counted, never scored as an accuracy."""
    best = max((s for s in table if s != "scratch"), key=lambda s: table[s]["mean"])
    trained = [v for v in table["scratch"]["values"] if abs(v - CHANCE) >= 0.005]
    failed = len(table["scratch"]["values"]) - len(trained)
    question = f"In the {quadrant_title(quadrant)} quadrant, does starting from pretrained weights beat training from scratch?"
    if len(trained) < 3:
        verdict = (f"training from scratch stayed at chance ({100 * CHANCE:.0f}%) on {failed} of "
                   f"{len(table['scratch']['values'])} seeds: a collapsed recipe, not an accuracy to compare")
        return Finding(f"scratch.{quadrant}", question, scale, None, None, None, False, verdict,
                       f"{where}, the reference run's scratch recipe did not train, so it says nothing about what "
                       "pretraining buys here; do not read its 50% as a result.")
    c = _compare(table[best]["values"], trained)
    do = (f"{where}, start from pretrained weights: {_label(best)} beat training from scratch by "
          f"{100 * c.diff:.1f} points." if _measurable(c) and c.diff > 0 else
          f"{where}, the reference run did not show pretrained weights ahead of training from scratch.")
    return Finding(f"scratch.{quadrant}", question, scale, *_points(c), _measurable(c),
                   evaluation.verdict(best, "scratch", c) + (f" ({failed} scratch run(s) at chance left out)"
                                                             if failed else ""), do)


def lr_findings(doc: Mapping[str, Any], source: str) -> list[Finding]:
    """The pretrained layers' learning rate, from the reference run's validation sweep (``lr.backbone``)."""
    sweep = doc.get("meta", {}).get("lr_sweep", [])
    if not sweep:
        return []
    chosen = doc["meta"]["backbone_lr"]
    head = doc["meta"].get("scale", {}).get("head_lr")
    lines = "; ".join(f"{d}: " + ", ".join(f"{r['backbone_lr']:g} {100 * r['val_accuracy']:.1f}%"
                                              for r in sweep if r["domain"] == d) for d in chosen)
    verdict = f"validation accuracy by backbone rate, one seed each ({lines})"
    if all(rate == head for rate in chosen.values()):
        do = (f"Train the pretrained layers at the head's rate ({head:g}) to start: a lower backbone rate did not "
              "do better on validation in any domain of the reference run (one seed each, so how much it loses is "
              "not measured).")
    else:
        do = "Choose the pretrained layers' rate on validation: " + ", ".join(
            f"{d} chose {rate:g}" for d, rate in chosen.items()) + f" (the head trains at {head:g})."
    return [Finding("lr.backbone", "Should the pretrained layers train at a lower learning rate than the new head?",
                    f"{source}: partial fine-tune, {doc['meta'].get('large')} images/class, validation sweep",
                    None, None, None, False, verdict, do)]


def bf16_findings(doc: Mapping[str, Any], source: str) -> list[Finding]:
    """bf16 autocast against float32 training on the CPU, per backbone (``bf16.<backbone>``)."""
    out = []
    for backbone in dict.fromkeys(r["backbone"] for r in doc["rows"]):
        rows = {p: sorted((r for r in doc["rows"] if r["backbone"] == backbone and r["precision"] == p),
                          key=lambda r: r["seed"]) for p in ("bf16", "fp32")}
        c = _compare([r["accuracy"] for r in rows["bf16"]], [r["accuracy"] for r in rows["fp32"]])
        speed = sum(r["seconds"] for r in rows["fp32"]) / sum(r["seconds"] for r in rows["bf16"])
        if _measurable(c):
            do = f"Train {backbone} in float32 on a CPU: bf16 changed its accuracy measurably."
        elif speed >= 1.2:
            wide = "" if c.high - c.low <= 0.05 else (
                f"; the interval ({100 * c.low:.1f} to {100 * c.high:.1f} points) is too wide to rule out a loss of "
                f"a few points, so check it on your validation set")
            do = (f"Ask for bf16 when training {backbone} on a CPU with native bf16 (device_settings(bf16=True)): "
                  f"{speed:.1f}x faster, with no measurable accuracy difference{wide}.")
        else:
            do = f"Keep {backbone} in float32 on a CPU: bf16 was not faster ({speed:.2f}x)."
        out.append(Finding(f"bf16.{backbone}", f"Does bf16 autocast train {backbone} on a CPU as well as float32, "
                           "and faster?", f"{source}: {len(rows['bf16'])} seeds per precision, test n={rows['bf16'][0]['n']}",
                           *_points(c), _measurable(c), evaluation.verdict("bf16", "float32", c), do))
    return out


def _read(path: Path) -> dict[str, Any]:
    return read_or_explain(path, read_json, what="committed results",
                           remedy="Restore it with git checkout, or run its script again.")


def all_findings(paths: Mapping[str, str | os.PathLike[str]] | None = None) -> dict[str, Finding]:
    """Every finding, by id, from the committed runs (``paths`` overrides :func:`evidence_path`)."""
    where = {k: Path((paths or {}).get(k, evidence_path(k))) for k in EVIDENCE}
    matrix, bf16 = _read(where["matrix"]), _read(where["bf16"])
    found = [*matrix_findings(matrix, "decision-matrix reference run"),
             *lr_findings(matrix, "decision-matrix reference run"), *bf16_findings(bf16, "bf16 parity run")]
    return {f.id: f for f in found}


def quote(finding_id: str, findings: Mapping[str, Finding] | None = None) -> str:
    """The sentence a lesson, the advisor or the README prints for ``finding_id``."""
    found = findings if findings is not None else all_findings()
    if finding_id not in found:
        raise KeyError(f"No finding {finding_id!r}; the findings are: {', '.join(sorted(found))}")
    return str(found[finding_id])
