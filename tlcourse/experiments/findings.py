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
from tlcourse.experiments import decision_matrix, finetune_reference, results_file
from tlcourse.strategies import STRATEGY_LABELS, TEXTBOOK, quadrant_title

__all__ = ["ARTICLES", "EVIDENCE", "Finding", "all_findings", "bf16_findings", "budget_findings", "evidence_path",
           "finetune_findings", "normalisation_findings", "lr_findings", "matrix_findings", "quote", "shift_findings", "sources_findings"]

#: The committed runs the findings come from.
EVIDENCE = {"matrix": "04_decision_matrix_reference.json", "bf16": "bf16_parity.json",
            "finetune": "02_finetune_reference.json", "normalisation": "01_normalisation.json"}
#: Chance accuracy of the decision matrix's tasks: two classes, balanced test sets.
CHANCE = decision_matrix.CHANCE
#: Where the course's two matrix articles (/work/shared/seeds 000 and 001) disagree: their first
#: choice in the quadrant. 000 gives cs231n's four cases (the whole network for large & similar;
#: a linear classifier on an earlier layer for small & dissimilar); 001 trains the classifier and
#: the top layers for large & similar, and only partial fine-tuning, with augmentation, for small &
#: dissimilar. The textbook table (tlcourse.strategies.TEXTBOOK) merges the two.
ARTICLES: dict[str, dict[str, str]] = {
    "large_similar": {"000": "full_ft", "001": "partial_ft"},
    "small_dissimilar": {"000": "probe_early", "001": "partial_ft"},
}
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
    compared: tuple[str, ...] = ()  # the two strategies (or splits) compared, A first

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


def _choose(a: str, b: str, c: evaluation.SeedComparison, won: Mapping[str, str], tied: str) -> tuple[str, str]:
    """Which of strategies ``a`` and ``b`` (``c`` compares a minus b) to start with, and the sentence
    that says so: the one the run measured ahead, with ``won[winner]``; within noise the cheaper
    (:data:`COST_ORDER`), with ``tied`` followed by " start with the cheaper, <its label>."."""
    if _measurable(c):
        choice = a if c.diff > 0 else b
        return choice, won[choice]
    choice = min((a, b), key=COST_ORDER.index)
    return choice, f"{tied} start with the cheaper, {_label(choice)}."


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
        scored = [s for s in table if table[s]["n"] >= evaluation.MIN_SEEDS]
        # The textbook's representative is chosen on validation, never on test (two draws otherwise).
        ours = max((s for s in TEXTBOOK[quadrant].strategies if s in scored), key=lambda s: table[s]["val_mean"])
        rival = max((s for s in scored if s not in TEXTBOOK[quadrant].strategies and s != "scratch"),
                    key=lambda s: table[s]["mean"])
        c = _compare(table[ours]["values"], table[rival]["values"])
        where = f"For {quadrant_title(quadrant)} data ({first.get('n_per_class')} images/class)"
        choice, do = _choose(ours, rival, c, {
            ours: f"{where}, use {_label(ours)}, the textbook's choice: it beat {_label(rival)} by {100 * c.diff:.1f} points.",
            rival: f"{where}, prefer {_label(rival)}: it beat the textbook's {_label(ours)} by {-100 * c.diff:.1f} points."},
            f"{where}, {_label(ours)} and {_label(rival)} are within noise of each other;")
        out.append(Finding(f"matrix.{quadrant}", f"In the {quadrant_title(quadrant)} quadrant, is the textbook's "
                           f"{_label(ours)} at least as good as the best other strategy ({_label(rival)})?",
                           scale, *_points(c), _measurable(c), evaluation.verdict(ours, rival, c), do, choice,
                           (ours, rival)))
        if "scratch" in table:
            out.append(_scratch_finding(quadrant, table, scale, where))
    return out


def _scratch_finding(quadrant: str, table: Mapping[str, Mapping[str, Any]], scale: str, where: str) -> Finding:
    """Pretrained against scratch. A scratch run at chance (it predicts one class of the two-class,
    balanced task) is a recipe that failed to train: it is counted, never scored as an accuracy."""
    best = max((s for s in table if s != "scratch" and table[s]["n"]), key=lambda s: table[s]["mean"])
    trained, failed = table["scratch"]["values"], table["scratch"]["collapsed"]
    question = f"In the {quadrant_title(quadrant)} quadrant, does starting from pretrained weights beat training from scratch?"
    if len(trained) < 3:
        verdict = (f"training from scratch collapsed to chance ({100 * CHANCE:.0f}%, one class predicted) on "
                   f"{failed} of {failed + len(trained)} seeds: a recipe that did not train, not an accuracy to "
                   f"compare (fewer than {evaluation.MIN_SEEDS} seeds trained)")
        return Finding(f"scratch.{quadrant}", question, scale, None, None, None, False, verdict,
                       f"{where}, the reference run's scratch recipe did not train, so it says nothing about what "
                       "pretraining buys here; do not read its 50% as a result.", compared=(best, "scratch"))
    c = _compare(table[best]["values"], trained)
    do = (f"{where}, start from pretrained weights: {_label(best)} beat training from scratch by "
          f"{100 * c.diff:.1f} points." if _measurable(c) and c.diff > 0 else
          f"{where}, the reference run did not show pretrained weights ahead of training from scratch.")
    return Finding(f"scratch.{quadrant}", question, scale, *_points(c), _measurable(c),
                   evaluation.verdict(best, "scratch", c) + (f" ({failed} collapsed scratch run(s) left out)"
                                                             if failed else ""), do, compared=(best, "scratch"))


def sources_findings(doc: Mapping[str, Any], source: str) -> list[Finding]:
    """Where articles 000 and 001 disagree (:data:`ARTICLES`), their two choices compared directly
    over the reference run's seeds (``sources.<quadrant>``): the data settle it, or say that this
    run cannot tell them apart (then the cheaper one is the place to start)."""
    out = []
    summary = decision_matrix.summarize(doc["rows"])
    for quadrant, picks in ARTICLES.items():
        table = summary.get(quadrant)
        a, b = picks["000"], picks["001"]
        if not table or min(table.get(a, {}).get("n", 0), table.get(b, {}).get("n", 0)) < evaluation.MIN_SEEDS:
            continue
        c = _compare(table[a]["values"], table[b]["values"])
        first = next(r for r in doc["rows"] if r["quadrant"] == quadrant)
        where = f"For {quadrant_title(quadrant)} data ({first.get('n_per_class')} images/class)"
        said = f"article 000 says {_label(a)}, article 001 says {_label(b)}"
        choice, do = _choose(a, b, c, {s: f"{where}, {said}; the reference run settles it for {_label(s)} "
                                          f"(ahead by {abs(100 * c.diff):.1f} points)." for s in (a, b)},
                             f"{where}, {said}; the reference run cannot tell them apart, so both are right as far "
                             "as it can see:")
        out.append(Finding(f"sources.{quadrant}", f"In the {quadrant_title(quadrant)} quadrant, is article 000's "
                           f"{_label(a)} or article 001's {_label(b)} the better choice?",
                           f"{source}: {first.get('dataset')}, {first.get('n_per_class')} images/class, "
                           f"{min(table[a]['n'], table[b]['n'])} seeds, test n={first.get('n_test')}",
                           *_points(c), _measurable(c), evaluation.verdict(a, b, c), do, choice, (a, b)))
    return out


def shift_findings(doc: Mapping[str, Any], source: str) -> list[Finding]:
    """Validation against test accuracy per dataset (``shift.<dataset>``): the mean validation
    accuracy of the pretrained strategies' quadrant-and-strategy cells against their mean test
    accuracy (Welch over the cells). A measurable gap means choices made on validation are made on
    a split that does not look like the test set."""
    out = []
    summary = decision_matrix.summarize([r for r in doc["rows"] if r["strategy"] != "scratch"])
    for dataset in dict.fromkeys(r.get("dataset") for r in doc["rows"]):
        quadrants = sorted({r["quadrant"] for r in doc["rows"] if r.get("dataset") == dataset},
                           key=lambda q: q.startswith("large"))
        cells = [(q, s) for q in quadrants for s, m in summary[q].items() if m["n"] >= evaluation.MIN_SEEDS]
        if len(cells) < evaluation.MIN_SEEDS:
            continue
        val = [summary[q][s]["val_mean"] for q, s in cells]
        test = [summary[q][s]["mean"] for q, s in cells]
        c = _compare(val, test)
        first = next(r for r in doc["rows"] if r.get("dataset") == dataset)
        n_val = 2 * doc.get("meta", {}).get("val_per_class", 0) or "?"
        # Does the validation choice pick the test's best in each quadrant all the same?
        same = [q for q in quadrants if max((s for qq, s in cells if qq == q), key=lambda s: summary[q][s]["val_mean"])
                == max((s for qq, s in cells if qq == q), key=lambda s: summary[q][s]["mean"])]
        behind = 0  # quadrants where the validation choice is measurably behind the test's best
        for q in (q for q in quadrants if q not in same):
            mine = [s for qq, s in cells if qq == q]
            by_val, by_test = (max(mine, key=lambda s, k=k: summary[q][s][k]) for k in ("val_mean", "mean"))
            behind += _measurable(_compare(summary[q][by_test]["values"], summary[q][by_val]["values"]))
        missed = len(quadrants) - len(same)
        picked = (f"the validation choice was also the test's best in {len(same)} of {len(quadrants)} quadrants"
                  + (f", and measurably behind it in {behind} of the other {missed}" if behind else
                     f", and within noise of it in the other {missed}" if missed else ""))
        lo, hi = sorted((100 * min(v - t for v, t in zip(val, test)), 100 * max(v - t for v, t in zip(val, test))))
        if _measurable(c) and c.diff > 0:
            do = (f"On {dataset}, validation accuracy ran {100 * c.diff:.1f} points above test (95% CI "
                  f"{100 * c.low:.1f} to {100 * c.high:.1f}; {lo:.1f} to {hi:.1f} across strategies): keep choosing on "
                  f"validation ({picked}), expect the test score to be lower, report only the test score, and where you can, "
                  "draw the validation images the way the test images were drawn.")
        elif _measurable(c):
            do = (f"On {dataset}, validation accuracy ran {-100 * c.diff:.1f} points below test: validation "
                  "understates the test score; choose on it, report the test score.")
        else:
            do = (f"On {dataset}, validation and test accuracy agree within noise ({lo:.1f} to {hi:.1f} points "
                  "across strategies): validation is a fair preview of the test score.")
        slug = "".join(ch for ch in str(dataset).split()[0].lower() if ch.isalnum())
        out.append(Finding(f"shift.{slug}", f"On {dataset}, does validation accuracy predict test accuracy?",
                           f"{source}: {len(cells)} strategy-and-quadrant cells (pretrained strategies, "
                           f"{', '.join(quadrants)}), validation n={n_val}, test n={first.get('n_test')}; the "
                           "interval covers variation between cells, not the sampling of the fixed validation images",
                           *_points(c), _measurable(c), evaluation.verdict("validation", "test", c), do,
                           compared=("validation", "test")))
    return out


def budget_findings(doc: Mapping[str, Any], source: str) -> list[Finding]:
    """How many trained runs ran into their epoch cap (``budget.cap``; the target is none), and
    which verdicts that leaves provisional: one where a capped strategy lost or tied, since more
    epochs could have changed it. A capped strategy that won keeps its win."""
    capped = decision_matrix.capped_runs(doc["rows"])
    if not capped:
        return []
    n_capped, n_runs = sum(c for c, _ in capped.values()), sum(n for _, n in capped.values())
    hit = {k: v for k, v in capped.items() if v[0]}
    caps = sorted({r["max_epochs"] for r in doc["rows"] if r.get("max_epochs") and
                   (r["quadrant"], r["strategy"]) in hit})
    detail = "; ".join(f"{q} {s} {c} of {n}" for (q, s), (c, n) in hit.items()) or "none"
    provisional = []
    found = {f.id: f for f in [*matrix_findings(doc, source), *sources_findings(doc, source)]}
    summary = decision_matrix.summarize(doc["rows"])
    for f in found.values():
        table = summary[f.id.split(".", 1)[1]]
        if f.effect is None or len(f.compared) != 2:
            continue
        loser = min(f.compared, key=lambda s: table[s]["mean"])
        at_risk = [s for s in f.compared if hit.get((f.id.split(".", 1)[1], s))]
        if (not f.measurable and at_risk) or (f.measurable and loser in at_risk):
            provisional.append(f.id)
    verdict = f"{n_capped} of {n_runs} trained runs ran into their epoch cap ({detail})"
    if n_capped:
        do = (f"Read the capped runs as possibly under-trained: {detail} stopped at the {'/'.join(map(str, caps))}-epoch "
              "cap while validation was still improving, so their scores are lower bounds; the verdicts a capped "
              f"strategy lost or tied are provisional ({', '.join(provisional) or 'none'}), a capped strategy's win "
              "stands. Give such a run a larger cap (the target is no capped run) before you trust a tie.")
    else:
        do = "Every trained run stopped on a validation plateau: the epoch budget did not bind."
    return [Finding("budget.cap", "Did the reference run's epoch budget cut any trained run short?",
                    f"{source}: trained strategies (partial_ft, full_ft, scratch), every seed", None, None, None,
                    False, verdict, do)]


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


#: What each arm of notebook 02's reference run is, in a sentence's words.
FINETUNE_ARMS = {"frozen": "the frozen extractor (head only)", "frozen_bn_train": "the frozen extractor with BatchNorm in train mode",
                 "fine_tune": "fine-tuning the top stage at 1e-4", "fine_tune_lr1e-3": "fine-tuning the top stage at 1e-3",
                 "fine_tune_bn_train": "fine-tuning with BatchNorm in train mode", "gradual": "gradual unfreezing"}
#: What to do, by comparison: when ``a`` wins, when ``b`` wins, and when the run cannot tell them apart.
FINETUNE_ADVICE = {
    "frozen_vs_fine_tune": ("fine-tune the top stages of a pretrained network on similar photos at this size",
                            "keep the backbone frozen and train the head",
                            "start with the frozen extractor, the cheaper of the two"),
    "backbone_lr": ("train the pretrained layers at the head's rate (1e-3)",
                    "give the pretrained layers a tenth of the head's rate (1e-4)",
                    "either rate works at this scale; choose it on your validation set"),
    "bn_frozen": ("keep frozen BatchNorm layers in eval mode (the course's fit does)",
                  "let frozen BatchNorm layers follow the new data (train mode)",
                  "the BatchNorm mode of a frozen extractor made no measurable difference here; keep eval mode, "
                  "which leaves frozen layers frozen"),
    "bn_fine_tune": ("fine-tune with BatchNorm in eval mode (its ImageNet statistics)",
                     "let BatchNorm re-estimate its statistics while fine-tuning (train mode)",
                     "either BatchNorm mode works when fine-tuning at this scale"),
    "gradual": ("unfreeze gradually: the head first, then the backbone",
                "train the backbone from the first epoch: gradual unfreezing lost",
                "skip gradual unfreezing: it did not help here, and a schedule is one more thing to tune"),
}


def finetune_findings(doc: Mapping[str, Any], source: str) -> list[Finding]:
    """Notebook 02's questions, from its reference run (:mod:`tlcourse.experiments.finetune_reference`)."""
    design, out = doc["meta"]["design"], []
    for c in finetune_reference.comparisons(doc):
        if "diff" not in c or c["n_seeds"] < evaluation.MIN_SEEDS:
            continue
        where = (f"{source}: CIFAR-10, {design['train_per_class']} training images per class, "
                 f"{design['test_per_class'] * design['classes']} test images, {c['n_seeds']} seeds, {design['size']} px")
        effect, low, high = (round(100 * v, 1) for v in (c["diff"], c["low"], c["high"]))
        a, b = FINETUNE_ARMS.get(c["a"], c["a"]), FINETUNE_ARMS.get(c["b"], c["b"])
        win_a, win_b, tie = FINETUNE_ADVICE[c["key"]]
        if c["measurable"]:
            winner, loser, advice = (a, b, win_a) if effect > 0 else (b, a, win_b)
            do = (f"{advice[0].upper()}{advice[1:]}: {winner} beat {loser} by {abs(effect):.1f} points "
                  f"(95% CI {min(abs(low), abs(high)):.1f} to {max(abs(low), abs(high)):.1f}).")
        else:
            do = (f"{tie[0].upper()}{tie[1:]}: {a} minus {b} = {effect:+.1f} points (95% CI {low:+.1f} to "
                  f"{high:+.1f}), not measurable at this size.")
        out.append(Finding(f"finetune.{c['key']}", c["question"], where, effect, low, high, c["measurable"],
                           c["verdict"], do))
    return out


def normalisation_findings(doc: Mapping[str, Any], source: str) -> list[Finding]:
    """The wrong ``Normalize`` against the weights' own statistics (``normalisation.<backbone>``), from
    notebook 01's cross-fitted linear probe: every unique Alien vs Predator photo scored once by a probe
    that never saw it, the two pipelines compared paired (exact McNemar, Newcombe interval)."""
    m = doc["metrics"]
    k = m["normalisation_counts"]  # both / right_only / wrong_only / neither: the paired 2x2 table
    right = [True] * (k["both"] + k["right_only"]) + [False] * (k["wrong_only"] + k["neither"])
    wrong = [True] * k["both"] + [False] * k["right_only"] + [True] * k["wrong_only"] + [False] * k["neither"]
    c = evaluation.paired_comparison(right, wrong)
    ok, backbone, n = evaluation.measurable(c), m["backbone"], len(right)
    do = (f"Take mean and std from the weights you load: for {backbone} the wrong statistics cost a linear probe "
          f"{100 * c.diff:.1f} points (95% CI {100 * c.low:.1f} to {100 * c.high:.1f})." if ok and c.diff > 0 else
          f"Take mean and std from the weights you load: for {backbone} notebook 01 measured no cost of the wrong "
          f"statistics at its size (95% CI {100 * c.low:.1f} to {100 * c.high:.1f} points), which is not the same "
          "as no cost.")
    return [Finding(f"normalisation.{backbone}", f"What does the wrong Normalize (mean/std) cost {backbone}?",
                    f"{source}: Alien vs Predator, {n} photos cross-fitted, linear probe",
                    round(100 * c.diff, 1), round(100 * c.low, 1), round(100 * c.high, 1), ok,
                    evaluation.verdict("the weights' own statistics", "the wrong statistics", c), do)]


def all_findings(paths: Mapping[str, str | os.PathLike[str]] | None = None) -> dict[str, Finding]:
    """Every finding, by id, from the committed runs (``paths`` overrides :func:`evidence_path`)."""
    where = {k: Path((paths or {}).get(k, evidence_path(k))) for k in EVIDENCE}
    matrix, bf16, finetune = _read(where["matrix"]), _read(where["bf16"]), _read(where["finetune"])
    normalisation = _read(where["normalisation"])
    src = "decision-matrix reference run"
    found = [*matrix_findings(matrix, src), *sources_findings(matrix, src), *shift_findings(matrix, src),
             *budget_findings(matrix, src), *lr_findings(matrix, src), *bf16_findings(bf16, "bf16 parity run"),
             *finetune_findings(finetune, "fine-tuning reference run"),
             *normalisation_findings(normalisation, "notebook 01's default run")]
    return {f.id: f for f in found}


def quote(finding_id: str, findings: Mapping[str, Finding] | None = None) -> str:
    """The sentence a lesson, the advisor or the README prints for ``finding_id``."""
    found = findings if findings is not None else all_findings()
    if finding_id not in found:
        raise KeyError(f"No finding {finding_id!r}; the findings are: {', '.join(sorted(found))}")
    return str(found[finding_id])
