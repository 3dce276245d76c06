"""The seed articles' reference run: its smoke setting (format and resume) and the claims table.

The smoke test runs :func:`tlcourse.experiments.articles_reference.main` with ``--smoke`` (the
reference code path on a tiny subset of the real mirror) into tmp_path, twice, to check that a
restart redoes nothing. The claims-table tests build synthetic result documents whose verdicts
are known in advance, so each test can fail.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from reference_smoke import smoke_twice

from tlcourse.experiments import articles_claims as claims
from tlcourse.experiments import articles_reference as art
from tlcourse.experiments import results_file
from tlcourse.experiments.reference_runs import bits, read_rows

ARTICLES = {"000", "001", "002", "003", "004"}


# ---------------------------------------------------------------- the smoke run


def test_smoke_run_writes_the_format_and_resumes(tmp_path: Path):
    doc, out, progress, argv = smoke_twice(art.main, tmp_path)
    meta = doc["meta"]
    assert meta["complete"] and meta["smoke"] and "--smoke" in meta["command"] and meta["missing"] == []
    assert {"cpu", "torch_threads", "packages"} <= set(meta["hardware"])
    assert len(doc["runs"]) == len(art.plan(art.SMOKE))
    for run in doc["runs"]:
        assert 0.0 <= run["accuracy"] <= 1.0 and run["n_test"] > 0 and len(run["correct"]) == (run["n_test"] + 3) // 4
    assert {r["recipe"] for r in doc["runs"]} == ARTICLES
    assert doc["code_flaws_002"] == claims.code_flaws_002
    rows = doc["claims"]
    assert {r["article"] for r in rows} == ARTICLES and all(set(r) == set(claims.COLUMNS) for r in rows)
    table = list(csv.DictReader(io.StringIO(out.with_suffix(".csv").read_text())))
    assert table == rows
    # the restart found every run done (smoke_twice): the same runs and claims
    lines = len(read_rows(progress))
    again = json.loads(out.read_text())
    assert again["runs"] == doc["runs"] and again["claims"] == rows
    # --claims-only recomputes the table from the file and runs nothing
    out.with_suffix(".csv").unlink()
    assert art.main([*argv, "--claims-only"]) == 0
    assert json.loads(out.read_text())["claims"] == rows and out.with_suffix(".csv").is_file()
    assert len(read_rows(progress)) == lines


def test_the_plan_is_seed_major_and_gives_every_recipe_three_seeds():
    steps = art.plan(art.REFERENCE)
    seeds = [s for _, _, s in steps]
    assert seeds == sorted(seeds)
    for recipe in ARTICLES:
        assert len({s for r, _, s in steps if r == recipe}) >= 3, recipe
    assert set(art.LAYER_MAP["layer3"]).isdisjoint(art.LAYER_MAP["layer4"])


# ---------------------------------------------------------------- the claims table on synthetic documents


def _run(recipe: str, variant: str, seed: int, right: int, n: int = 200, **extra) -> dict:
    return dict(recipe=recipe, variant=variant, seed=seed, accuracy=right / n, n_test=n,
                correct=bits([i < right for i in range(n)]), **extra)


def _doc(acc_002: int = 184, acc_003: tuple[int, int] = (140, 180), random_004: int = 40,
         scratch: tuple[float, ...] = (0.5, 0.52, 0.48)) -> dict:
    runs = []
    for s in range(3):
        runs.append(_run("002", "as_written", s, acc_002 + s - 1, extract_seconds=60.0, train_seconds=1.5, n_train=694,
                         test_copies_removed=["a", "b"]))
        five, fifteen = acc_003
        runs.append(_run("003", "as_written", s, fifteen + s, accuracy_5=(five + s) / 200,
                         correct_5=bits([i < five + s for i in range(200)])))
        runs.append(_run("004", "pretrained_layer3", s, 150 + s))
        runs.append(_run("004", "pretrained_frozen", s, 149 - s))
        runs.append(_run("004", "random_layer3", s, random_004 + s))
        runs.append(_run("000", "full_ft", s, 100 + 2 * s))
        runs.append(_run("000", "frozen", s, 120 + s))
        for dom in ("similar", "dissimilar"):
            for n, right in ((10, 150), (100, 170), (1000, 171)):
                runs.append(_run("001", f"{dom}:{n}", s, right + s, domain=dom, n_per_class=n))
    values = {"small_dissimilar": {"full_ft": [0.8, 0.82, 0.78], "partial_ft": [0.85, 0.86, 0.84], "scratch": list(scratch)},
              "large_dissimilar": {"full_ft": [0.85, 0.86, 0.84], "partial_ft": [0.88, 0.87, 0.89], "scratch": list(scratch)}}
    meta = {"scale": {"avp_crop": 224, "epochs_002": 25, "n_003": 20, "cifar_size": 32, "epochs_003": 15, "n_004": 20,
                      "epochs_004": 10, "n_000": 10, "epochs_000": 20, "test_per_class": 100, "curve_px": 96,
                      "curve_sizes": [10, 100, 1000]},
            "classes_003": list(art.CLASSES_003), "layer_map": {k: list(v) for k, v in art.LAYER_MAP.items()},
            "cut_004": art.CUT_004}
    ref = {"values": values, "small": 40, "large": 1000, "size": 96, "backbone": "efficientnet_lite0", "file": "x.json"}
    return {"meta": meta, "runs": runs, "reference_04": ref}


def _row(rows: list[dict], article: str, claimed: str) -> dict:
    hits = [r for r in rows if r["article"] == article and claimed in r["claimed"]]
    assert len(hits) == 1, (article, claimed, [r["claimed"] for r in rows])
    return hits[0]


def test_every_row_has_the_columns_a_lesson_and_the_articles_figures():
    rows = art.claims_table(_doc())
    assert all(set(r) == set(claims.COLUMNS) for r in rows)
    assert {r["article"] for r in rows} == ARTICLES
    assert all(r["lesson"] in {"01", "02", "03", "04", "05", "06"} for r in rows)
    claimed = " ".join(r["claimed"] for r in rows)
    for figure in ("92%", "2m 47s", "91%", "97%", "1000"):
        assert figure in claimed
    md = claims.markdown(rows, lesson="05")
    assert md.count("\n") == 1 + sum(r["lesson"] == "05" for r in rows) and "| 002 |" in md


def test_a_claimed_accuracy_inside_the_interval_is_consistent_and_one_above_it_is_not():
    assert _row(art.claims_table(_doc(acc_002=184)), "002", "92% accuracy")["verdict"].startswith("consistent")
    low = _row(art.claims_table(_doc(acc_002=150)), "002", "92% accuracy")["verdict"]
    assert low.startswith("not reproduced") and "above" in low


def test_the_five_versus_fifteen_epoch_claim_gets_a_welch_verdict():
    better = _row(art.claims_table(_doc(acc_003=(140, 180))), "003", "10 more epochs")
    assert better["verdict"].startswith("epoch 15 is better than epoch 5") and "Welch" in better["measured"]
    assert "the claimed +6 points lies outside" in better["verdict"]  # 20 points measured
    same = _row(art.claims_table(_doc(acc_003=(150, 150))), "003", "10 more epochs")
    assert same["verdict"].startswith("no measurable difference")


def test_random_weights_and_the_medical_claim_follow_the_numbers():
    rows = art.claims_table(_doc(random_004=40))
    assert _row(rows, "004", "loads the pretrained")["verdict"].startswith("pretrained weights is better")
    assert _row(rows, "003", "medical")["verdict"].startswith("contradicted")
    worse = art.claims_table(_doc(scratch=(0.95, 0.96, 0.97)))
    assert _row(worse, "003", "medical")["verdict"].startswith("partly supported")
    tied = art.claims_table(_doc(scratch=(0.80, 0.86, 0.88)))  # within noise of every fine-tune
    assert _row(tied, "003", "medical")["verdict"].startswith("not settled")


def test_the_size_line_reports_where_the_curve_stops_rising():
    row = _row(art.claims_table(_doc()), "001", "1000")
    assert "10/class is measurably below 1000/class, no size from 100 up is" in row["measured"]
    assert "similar data gain measurably up to 100 images per class and not beyond" in row["verdict"]


def test_missing_runs_say_so_instead_of_inventing_a_number():
    doc = _doc()
    doc["runs"] = [r for r in doc["runs"] if r["recipe"] != "003"]
    row = _row(art.claims_table(doc), "003", "91% after 5 epochs")
    assert row["measured"].startswith("not run") and row["verdict"] == "not measured"
    two = _doc()
    two["runs"] = [r for r in two["runs"] if not (r["recipe"] == "000" and r["seed"] == 2)]
    assert _row(art.claims_table(two), "000", "small dataset")["verdict"].startswith("no interval")


def test_the_eight_flaws_of_002_are_distinct_and_listed():
    assert len(claims.code_flaws_002) == 8 == len(set(claims.code_flaws_002))
    row = _row(art.claims_table(_doc()), "002", "this code")
    assert row["measured"].startswith("8 flaws") and all(f in row["measured"] for f in claims.code_flaws_002)


# ---------------------------------------------------------------- the committed result


def test_the_committed_result_has_three_seeds_per_recipe_and_current_claims():
    doc = json.loads(results_file("articles_reference.json").read_text())
    meta = doc["meta"]
    assert not meta["smoke"] and meta["command"].startswith("TLCOURSE_MIRROR=<mirror> python scripts/articles_reference.py")
    assert {"cpu", "torch_threads", "packages"} <= set(meta["hardware"])
    seeds = {}
    for r in doc["runs"]:
        seeds.setdefault((r["recipe"], r["variant"]), set()).add(r["seed"])
    assert {recipe for recipe, _ in seeds} == ARTICLES
    if meta["complete"]:
        assert all(len(s) >= 3 for s in seeds.values()), seeds
    assert doc["reference_04"] == art.reference_04(), \
        "04's reference run changed since: python scripts/articles_reference.py --claims-only"
    assert doc["claims"] == art.claims_table(doc), "stale table: python scripts/articles_reference.py --claims-only"
    assert claims.committed_claims("05") == [r for r in doc["claims"] if r["lesson"] == "05"]
    table = list(csv.DictReader(io.StringIO(results_file("articles_reference.csv").read_text())))
    assert table == doc["claims"]
