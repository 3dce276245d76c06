"""Findings follow their evidence, and the advice quotes them: change a committed number and the
finding changes; the advisor never recommends a strategy or a rate that a finding contradicts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tlcourse import evaluation
from tlcourse.experiments import advisor, decision_matrix, findings
from tlcourse.strategies import QUADRANTS, TEXTBOOK


@pytest.fixture(scope="module")
def found() -> dict[str, findings.Finding]:
    return findings.all_findings()


@pytest.fixture(scope="module")
def matrix_doc() -> dict:
    return json.loads(findings.evidence_path("matrix").read_text())


def test_every_quadrant_has_its_findings_and_each_says_what_to_do(found):
    for q in QUADRANTS:
        assert f"matrix.{q}" in found and f"scratch.{q}" in found
    assert {"lr.backbone", "bf16.resnet18", "bf16.efficientnet_lite0"} <= set(found)
    for f in found.values():
        assert f.do and f.verdict and f.evidence and f.question.endswith("?")
        assert f.measurable is (f.low is not None and (f.low > 0 or f.high < 0) and "better than" in f.verdict)
    assert {"budget.cap", "shift.pneumoniamnist", "shift.cifar10", "sources.large_similar",
            "sources.small_dissimilar"} <= set(found)


def test_a_matrix_finding_is_the_seed_comparison_of_its_rows(found, matrix_doc):
    for quadrant, table in decision_matrix.summarize(matrix_doc["rows"]).items():
        f = found[f"matrix.{quadrant}"]
        ours, rival = f.compared
        assert ours in TEXTBOOK[quadrant].strategies and rival not in TEXTBOOK[quadrant].strategies
        c = evaluation.seeds_comparison(table[ours]["values"], table[rival]["values"])
        assert (f.effect, f.low, f.high) == (round(100 * c.diff, 1), round(100 * c.low, 1), round(100 * c.high, 1))


def test_a_finding_follows_its_evidence_when_a_number_changes(matrix_doc, tmp_path):
    doc = copy.deepcopy(matrix_doc)
    for row in doc["rows"]:  # the textbook's probe now loses clearly in the small & similar quadrant
        if row["quadrant"] == "small_similar" and row["strategy"] == "probe_last":
            row["accuracy"] -= 0.2
    changed = {f.id: f for f in findings.matrix_findings(doc, "edited")}["matrix.small_similar"]
    assert changed.measurable and changed.choice == "probe_early" and "prefer" in changed.do


def test_scratch_runs_at_chance_are_counted_never_scored(found, matrix_doc):
    assert all(found[f"scratch.{q}"].effect is not None for q in QUADRANTS)  # the reference's scratch trained
    doc = copy.deepcopy(matrix_doc)
    for row in doc["rows"]:  # a scratch recipe that predicts one class on every seed
        if row["quadrant"] == "small_dissimilar" and row["strategy"] == "scratch":
            row.update(accuracy=0.5, val_accuracy=0.5, collapsed=True)
    f = {f.id: f for f in findings.matrix_findings(doc, "edited")}["scratch.small_dissimilar"]
    assert f.effect is None and not f.measurable and "chance" in f.verdict and "50%" in f.do


@pytest.fixture(scope="module")
def advice() -> dict[str, advisor.Recommendation]:
    """The advisor's recommendation, from the committed evidence, at one point inside each quadrant."""
    evidence = advisor.reference_evidence()
    points = {"small_similar": (40, 0.9), "large_similar": (1000, 0.9), "small_dissimilar": (40, 0.2),
              "large_dissimilar": (1000, 0.2)}
    return {q: advisor.recommend(n, s, evidence=evidence) for q, (n, s) in points.items()}


def test_the_advisor_follows_the_findings(found, advice):
    for q, rec in advice.items():
        assert rec.strategy == found[f"matrix.{q}"].choice, q
        text = str(rec)
        assert f"finding matrix.{q}" in text
        assert "low learning rate" not in text.lower()  # lr.backbone: the head's rate did best on validation
        if rec.strategy in ("partial_ft", "full_ft"):
            assert "finding lr.backbone" in text


def test_without_evidence_the_advisor_gives_the_textbook_choice():
    assert advisor.recommend(40, 0.9).strategy == TEXTBOOK["small_similar"].choice


def test_quote_names_the_finding_or_lists_the_known_ones(found):
    assert findings.quote("lr.backbone", found).startswith("[lr.backbone] ")
    with pytest.raises(KeyError, match="matrix.small_similar"):
        findings.quote("lr.head", found)


def test_a_collapsed_run_is_never_scored():
    rows = [dict(quadrant="small_similar", strategy="scratch", seed=i, accuracy=a, val_accuracy=a, collapsed=c)
            for i, (a, c) in enumerate([(0.5, True), (0.62, True), (0.5, None), (0.7, False)])]
    m = decision_matrix.summarize(rows)["small_similar"]["scratch"]
    assert m["values"] == [0.7] and m["collapsed"] == 3  # the row's own flag decides; else chance does


def test_the_shift_finding_is_validation_minus_test_of_the_committed_cells(found, matrix_doc):
    table = decision_matrix.summarize([r for r in matrix_doc["rows"] if r["strategy"] != "scratch"])
    cells = [table[q][s] for q in ("small_dissimilar", "large_dissimilar") for s in table[q]]
    c = evaluation.seeds_comparison([m["val_mean"] for m in cells], [m["mean"] for m in cells])
    f = found["shift.pneumoniamnist"]
    assert (f.effect, f.low, f.high) == (round(100 * c.diff, 1), round(100 * c.low, 1), round(100 * c.high, 1))
    assert f.measurable and f.effect > 0 and f"{f.effect:.1f} points above test" in f.do
    assert not found["shift.cifar10"].measurable and "fair preview" in found["shift.cifar10"].do


def test_the_shift_finding_follows_its_evidence(matrix_doc):
    doc = copy.deepcopy(matrix_doc)
    for row in doc["rows"]:  # a validation split drawn like the test split: no gap left
        row["val_accuracy"] = row["accuracy"]
    f = {f.id: f for f in findings.shift_findings(doc, "edited")}["shift.pneumoniamnist"]
    assert not f.measurable and "fair preview" in f.do


def test_the_budget_finding_counts_the_capped_runs(found, matrix_doc):
    trained = [r for r in matrix_doc["rows"] if r.get("max_epochs") is not None]
    capped = [r for r in trained if not r["stopped_on_plateau"]]
    assert found["budget.cap"].verdict.startswith(f"{len(capped)} of {len(trained)} trained runs")
    assert all(r["quadrant"].startswith("large") for r in capped)  # the small quadrants' budget never bound
    doc = copy.deepcopy(matrix_doc)
    for row in doc["rows"]:
        row["stopped_on_plateau"] = True
    f = findings.budget_findings(doc, "edited")[0]
    assert f.verdict.startswith(f"0 of {len(trained)}") and "did not bind" in f.do


def test_a_capped_strategy_that_lost_or_tied_leaves_its_verdict_provisional(found):
    f = found["budget.cap"]
    if "partial_ft" in f.verdict:  # partial_ft ran into the cap; where it only tied, the tie is provisional
        ties = [g.id for g in found.values() if "partial_ft" in g.compared and not g.measurable
                and g.id.split(".", 1)[1].startswith("large")]
        assert ties and all(i in f.do for i in ties)
        wins = [g.id for g in found.values() if g.compared and g.compared[0] == "partial_ft" and g.measurable
                and (g.effect or 0) > 0 and g.id.startswith("matrix.")]
        assert not [i for i in wins if i in f.do]  # a capped strategy's win stands


def test_the_articles_disagreement_is_settled_by_a_direct_comparison(found, matrix_doc):
    table = decision_matrix.summarize(matrix_doc["rows"])
    for q, picks in findings.ARTICLES.items():
        f = found[f"sources.{q}"]
        c = evaluation.seeds_comparison(table[q][picks["000"]]["values"], table[q][picks["001"]]["values"])
        assert f.compared == (picks["000"], picks["001"]) and f.measurable == evaluation.measurable(c)
        assert f.choice in picks.values() and "article 000" in f.do and "article 001" in f.do
    doc = copy.deepcopy(matrix_doc)
    for row in doc["rows"]:  # article 000's whole-network fine-tune now wins clearly
        if row["quadrant"] == "large_similar" and row["strategy"] == "full_ft":
            row["accuracy"] += 0.08
    edited = {f.id: f for f in findings.sources_findings(doc, "edited")}["sources.large_similar"]
    assert edited.measurable and edited.choice == "full_ft" and "settles it" in edited.do


def test_the_textbook_speaks_through_its_validation_choice(found, matrix_doc):
    table = decision_matrix.summarize(matrix_doc["rows"])
    for q in QUADRANTS:
        ours = found[f"matrix.{q}"].compared[0]
        textbook = [s for s in TEXTBOOK[q].strategies if table[q][s]["n"] >= 3]
        assert ours == max(textbook, key=lambda s: table[q][s]["val_mean"])


def test_the_matrix_figure_shows_every_strategy_a_tie_leaves_standing():
    evidence = advisor.reference_evidence()
    for q, e in evidence.items():
        line = advisor._measured_line(e)
        for f in e.quoted:
            if f.id.startswith(("matrix.", "sources.")) and not f.measurable:
                a, b = (advisor._short(s) for s in f.compared)
                assert f"{a} = {b}" in line, (q, line)
        if q in findings.ARTICLES:
            assert "000:" in advisor._articles_line(q) and "001:" in advisor._articles_line(q)


def test_the_advisor_never_recommends_against_a_finding(found, advice):
    for q, rec in advice.items():
        for f in found.values():
            if f.id.endswith(q) and f.measurable and len(f.compared) == 2 and f.effect is not None:
                loser = f.compared[1] if f.effect > 0 else f.compared[0]
                assert rec.strategy != loser, (q, f.id)
        if f"sources.{q}" in found:
            assert f"finding sources.{q}" in str(rec)


def test_notebook_04s_code_exercise_solution_passes_its_check():
    """Exercise 04.2's collapsed solution, run on the committed reference run, passes the check the
    notebook's exercise cell makes (the learner writes code; the solution is checked, not just shown)."""
    import re
    from pathlib import Path

    import nbformat
    import numpy as np

    from tlcourse.courseware import exercises

    nb = nbformat.read(Path(__file__).parents[1] / "notebooks" / "04_decision_matrix.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    solution = re.search(r"<summary>Solution 2</summary>\s*```python\n(.*?)```", text, flags=re.S).group(1)
    reference = decision_matrix.load_results()
    gap = decision_matrix.summarize(reference["rows"])["large_dissimilar"]["full_ft"]
    space = {"reference": reference, "np": np, "exercises": exercises, "gap": gap}
    exec(solution.replace("exercises.check(", "result = exercises.check("), space)
    assert space["result"] is True
    assert 5 < space["my_gap"] < 20  # the X-ray quadrant's validation-to-test gap for full_ft, in points


@pytest.mark.reference_data
def test_notebook_02s_questions_are_findings_of_its_reference_run():
    from tlcourse.experiments import finetune_reference

    found = findings.all_findings()
    doc = json.loads(findings.evidence_path("finetune").read_text())
    for c in finetune_reference.comparisons(doc):
        f = found[f"finetune.{c['key']}"]
        assert f.effect == round(100 * c["diff"], 1) and f.measurable == c["measurable"], c["key"]
        assert f.verdict == c["verdict"] and str(abs(f.effect)) in f.do or f"{f.effect:+.1f}" in f.do
    assert doc["meta"]["runs_hit_cap"] == 0 and doc["meta"]["runs_collapsed"] == 0, "every run reached a plateau"


@pytest.mark.reference_data
def test_the_two_learning_rate_findings_give_the_same_advice():
    found = findings.all_findings()
    rate = found["finetune.backbone_lr"]
    if rate.measurable:  # the fine-tuning run can tell the rates apart: the matrix's sweep must not advise the other
        heads_rate = rate.effect > 0
        assert ("head's rate" in found["lr.backbone"].do) == heads_rate
        assert ("head's rate" in rate.do) == heads_rate


@pytest.mark.reference_data
def test_the_normalisation_finding_is_notebook_01s_committed_result():
    import nbformat

    f = findings.all_findings()["normalisation.efficientnet_lite0"]
    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / "01_data_loading.ipynb", as_version=4)
    printed = "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                      for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"{f.effect:.1f} points" in printed and f"{f.low:.1f} to {f.high:.1f}" in printed, \
        "the committed evidence file and notebook 01's committed outputs must be the same run"


def test_the_shift_finding_says_when_the_validation_choice_lost_on_test(matrix_doc):
    doc = copy.deepcopy(matrix_doc)
    for row in doc["rows"]:  # validation favours probe_last, whose test score drops by 20 points
        if row["quadrant"] == "small_dissimilar" and row["strategy"] == "probe_last":
            row["val_accuracy"], row["accuracy"] = 1.0, row["accuracy"] - 0.2
    f = {f.id: f for f in findings.shift_findings(doc, "edited")}["shift.pneumoniamnist"]
    assert "measurably behind it in 1 of the other" in f.do
