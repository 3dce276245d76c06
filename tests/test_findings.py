"""Findings follow their evidence, and the advice quotes them: change a committed number and the
finding changes; the advisor never recommends a strategy or a rate that a finding contradicts."""

from __future__ import annotations

import copy
import json

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


def test_a_matrix_finding_is_the_seed_comparison_of_its_rows(found, matrix_doc):
    table = decision_matrix.summarize(matrix_doc["rows"])["large_similar"]
    c = evaluation.seeds_comparison(table["partial_ft"]["values"], table["probe_early"]["values"])
    f = found["matrix.large_similar"]
    assert (f.effect, f.low, f.high) == (round(100 * c.diff, 1), round(100 * c.low, 1), round(100 * c.high, 1))


def test_a_finding_follows_its_evidence_when_a_number_changes(matrix_doc, tmp_path):
    doc = copy.deepcopy(matrix_doc)
    for row in doc["rows"]:  # the textbook's probe now loses clearly in the small & similar quadrant
        if row["quadrant"] == "small_similar" and row["strategy"] == "probe_last":
            row["accuracy"] -= 0.2
    changed = {f.id: f for f in findings.matrix_findings(doc, "edited")}["matrix.small_similar"]
    assert changed.measurable and changed.choice == "probe_early" and "prefer" in changed.do


def test_scratch_runs_at_chance_are_counted_never_scored(found, matrix_doc):
    f = found["scratch.small_dissimilar"]  # every seed at exactly 50% in the reference run
    assert f.effect is None and not f.measurable and "chance" in f.verdict and "50%" in f.do


def test_the_advisor_follows_the_findings(found):
    evidence = advisor.reference_evidence()
    points = {"small_similar": (40, 0.9), "large_similar": (1000, 0.9), "small_dissimilar": (40, 0.2),
              "large_dissimilar": (1000, 0.2)}
    for q, (n, s) in points.items():
        rec = advisor.recommend(n, s, evidence=evidence)
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
