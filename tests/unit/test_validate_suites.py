"""The validation gate's suites at their bounds: data exactly at a bound passes, one step past
it fails that expectation and no other. One Great Expectations run (no Data Docs) holds every
case as its own batch; the configuration is a strict one, not the loosest."""

from __future__ import annotations

import pandas as pd
import pytest

from mofi_core.config.validate import ValidateConfig
from mofi_core.validate.suites import (
    I2EFrames,
    distribution,
    i2e_suites,
    manifest_suite,
    mentions_suite,
    run_suites,
    scores_suite,
)
from tests.errors import names

CFG = ValidateConfig(max_labels_per_image=3, min_fraction_of_corpus=0.25, max_entity_share=0.6,
                     max_imbalance=2.0, data_docs=False)
RULE = {"score_floor": 0.3, "min_images_per_entity": 2, "max_images_per_entity": 4}
CLASSES = ["A", "B"]
KB = ["A", "B", "C"]
CORPUS = 20  # min rows: int(0.25 * 20) = 5


def _images(n: int, labels: int = 1, in_manifest: bool = True) -> pd.DataFrame:
    return pd.DataFrame({"key": [f"k{i}" for i in range(n)], "num_labels": [labels] * n,
                         "in_manifest": [in_manifest] * n})


def _labels(score: float, entity: str = "A") -> pd.DataFrame:
    return pd.DataFrame({"key": ["k0", "k1"], "entity_id": [entity, "B"],
                         "score": [score, 1.0]})


def _entities(a: int, b: int) -> pd.DataFrame:
    return pd.DataFrame({"entity_id": CLASSES, "images": [a, b]})


def _dist(share: float, classes: int = 2, top: float = 0.5, imbalance: float = 1.0):
    return pd.DataFrame([{"corpus_share": share, "top_entity_share": top,
                          "imbalance": imbalance, "classes": classes}])


def _manifest(n: int = 3, **over) -> pd.DataFrame:
    rows = {"key": [f"k{i}" for i in range(n)], "shard": ["00000.tar"] * n, "width": [1] * n,
            "height": [1] * n, "sha256": ["ab" * 32] * n, "text_chars": [1] * n,
            "duplicate_of": [None] * n}
    return pd.DataFrame({**rows, **over})


def _mentions(**over) -> pd.DataFrame:
    rows = {"key": ["k0", "k1"], "in_manifest": [True, True], "start": [0, 3], "end": [1, 9],
            "source": ["ner", "kb"], "entity_id": ["A", None], "link_score": [0.0, 1.0]}
    return pd.DataFrame({**rows, **over})


def _scored(**over) -> pd.DataFrame:
    rows = {"key": ["k0", "k0"], "entity_id": ["A", "C"], "in_manifest": [True, True],
            "score": [-1.0, 1.0]}
    return pd.DataFrame({**rows, **over})


BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
CASES = {  # batch -> (suite, frame, the failing (expectation, column) or None)
    "manifest_at_bounds": ("manifest", _manifest(3), None),
    "manifest_more_rows_than_the_corpus": ("manifest", _manifest(4),
                                           ("expect_table_row_count_to_be_between", None)),
    "manifest_zero_width": ("manifest", _manifest(width=[1, 0, 1]), (BETWEEN, "width")),
    "manifest_zero_height": ("manifest", _manifest(height=[0, 1, 1]), (BETWEEN, "height")),
    "manifest_no_text": ("manifest", _manifest(text_chars=[1, 1, 0]), (BETWEEN, "text_chars")),
    "manifest_bad_shard_name": ("manifest", _manifest(shard=["00000.tar", "0.tar", "00001.tar"]),
                                ("expect_column_values_to_match_regex", "shard")),
    "manifest_bad_sha": ("manifest", _manifest(sha256=["ab" * 32, "AB" * 32, "ab" * 31]),
                         ("expect_column_values_to_match_regex", "sha256")),
    "manifest_empty": ("manifest", _manifest(0), ("expect_table_row_count_to_be_between", None)),
    "manifest_key_twice": ("manifest", _manifest(key=["k0", "k0", "k1"]),
                           ("expect_column_values_to_be_unique", "key")),
    "manifest_many_duplicates": ("manifest", _manifest(duplicate_of=["k1", None, None]),
                                 ("expect_column_values_to_be_null", "duplicate_of")),
    "mentions_at_bounds": ("mentions", _mentions(), None),
    "mentions_negative_start": ("mentions", _mentions(start=[-1, 3]), (BETWEEN, "start")),
    "mentions_empty_span": ("mentions", _mentions(end=[1, 3]),
                            ("expect_column_pair_values_a_to_be_greater_than_b", None)),
    "mentions_unknown_source": ("mentions", _mentions(source=["ner", "regex"]),
                                (IN_SET, "source")),
    "mentions_link_score_over_one": ("mentions", _mentions(link_score=[0.0, 1.01]),
                                     (BETWEEN, "link_score")),
    "mentions_negative_link_score": ("mentions", _mentions(link_score=[-0.01, 1.0]),
                                     (BETWEEN, "link_score")),
    "mentions_not_in_the_kb": ("mentions", _mentions(entity_id=["Z", None]),
                               (IN_SET, "entity_id")),
    "mentions_not_ingested": ("mentions", _mentions(in_manifest=[True, False]),
                              (IN_SET, "in_manifest")),
    "scores_at_bounds": ("scores", _scored(), None),
    "scores_out_of_range": ("scores", _scored(score=[-1.01, 1.0]), (BETWEEN, "score")),
    "scores_over_one": ("scores", _scored(score=[-1.0, 1.01]), (BETWEEN, "score")),
    "scores_pair_twice": ("scores", _scored(entity_id=["A", "A"]),
                          ("expect_compound_columns_to_be_unique", None)),
    "scores_not_in_the_kb": ("scores", _scored(entity_id=["A", "Z"]), (IN_SET, "entity_id")),
    "scores_unlinked": ("scores", _scored(entity_id=["A", None]),
                        ("expect_column_values_to_not_be_null", "entity_id")),
    "images_at_bounds": ("images", _images(5, labels=3), None),
    "images_one_label": ("images", _images(20, labels=1), None),
    "images_too_many_labels": ("images", _images(5, labels=4),
                               ("expect_column_values_to_be_between", "num_labels")),
    "images_no_label": ("images", _images(5, labels=0),
                        ("expect_column_values_to_be_between", "num_labels")),
    "images_too_few": ("images", _images(4), ("expect_table_row_count_to_be_between", None)),
    "images_too_many": ("images", _images(21), ("expect_table_row_count_to_be_between", None)),
    "images_not_ingested": ("images", _images(5, in_manifest=False),
                            ("expect_column_values_to_be_in_set", "in_manifest")),
    "labels_at_floor": ("labels", _labels(0.3), None),
    "labels_under_floor": ("labels", _labels(0.2999),
                           ("expect_column_values_to_be_between", "score")),
    "labels_over_one": ("labels", _labels(1.01),
                        ("expect_column_values_to_be_between", "score")),
    "labels_not_a_class": ("labels", _labels(0.5, entity="C"),
                           ("expect_column_values_to_be_in_set", "entity_id")),
    "entities_at_bounds": ("entities", _entities(2, 4), None),
    "entities_too_few_images": ("entities", _entities(1, 4),
                                ("expect_column_values_to_be_between", "images")),
    "entities_too_many_images": ("entities", _entities(2, 5),
                                 ("expect_column_values_to_be_between", "images")),
    "entities_one_missing": ("entities", _entities(2, 3).iloc[:1],
                             ("expect_table_row_count_to_equal", None)),
    "distribution_at_bounds": ("distribution", _dist(0.25, top=0.6, imbalance=2.0), None),
    "distribution_small_share": ("distribution", _dist(0.2499),
                                 ("expect_column_values_to_be_between", "corpus_share")),
    "distribution_share_over_one": ("distribution", _dist(1.01),
                                    ("expect_column_values_to_be_between", "corpus_share")),
    "distribution_one_class": ("distribution", _dist(0.5, classes=1),
                               ("expect_column_values_to_be_between", "classes")),
    "distribution_one_entity_dominates": ("distribution", _dist(0.5, top=0.61),
                                          ("expect_column_values_to_be_between",
                                           "top_entity_share")),
    "distribution_imbalanced": ("distribution", _dist(0.5, imbalance=2.01),
                                ("expect_column_values_to_be_between", "imbalance")),
}


def _fresh(suite: str) -> list:
    """A new expectation list of ``suite`` (an expectation belongs to one suite only)."""
    if suite == "manifest":
        return manifest_suite(3)
    if suite == "mentions":
        return mentions_suite(KB)
    if suite == "scores":
        return scores_suite(KB)
    return i2e_suites(CFG, RULE, CLASSES, KB, CORPUS)[suite]


@pytest.fixture(scope="module")
def results():
    """suite -> the GX results of that suite's cases, run on first use (one GX run per suite:
    a mutant of one suite function runs only that suite's cases)."""
    done: dict[str, list[dict]] = {}

    def of(suite: str) -> list[dict]:
        if suite not in done:
            done[suite] = run_suites({name: (frame, _fresh(suite)) for name, (s, frame, _)
                                      in CASES.items() if s == suite}, run="bounds")
        return done[suite]

    return of


@pytest.mark.parametrize("case", list(CASES))
def test_each_bound_passes_at_the_bound_and_fails_past_it(results, case):
    rows = [r for r in results(CASES[case][0]) if r["batch"] == case]
    assert rows and all(r["exception"] is None for r in rows), rows
    failed = [(r["expectation"], r["kwargs"].get("column")) for r in rows if not r["success"]]
    want = CASES[case][2]
    assert failed == ([want] if want else [])


def test_every_case_of_every_suite_in_one_run():
    """The cases above again, in one GX run whose suites this test builds itself: mutation
    testing runs, for a mutant, the tests that called its function, and the fixture's cache
    shows each suite's call to the first case of that suite only."""
    rows = run_suites({name: (frame, _fresh(suite)) for name, (suite, frame, _)
                       in CASES.items()}, run="all")
    for case, (_, _, want) in CASES.items():
        mine = [r for r in rows if r["batch"] == case]
        assert mine and all(r["exception"] is None for r in mine), (case, mine)
        failed = [(r["expectation"], r["kwargs"].get("column")) for r in mine
                  if not r["success"]]
        assert failed == ([want] if want else []), case
    warning = sorted({(r["batch"].split("_")[0], r["expectation"], r["kwargs"].get("column"))
                      for r in rows if r["severity"] == "warning"})
    assert warning == [
        ("distribution", "expect_column_values_to_be_between", "imbalance"),
        ("distribution", "expect_column_values_to_be_between", "top_entity_share"),
        ("manifest", "expect_column_values_to_be_null", "duplicate_of"),
        ("mentions", "expect_column_values_to_not_be_null", "entity_id")]


def test_a_tenth_of_duplicates_and_four_fifths_unlinked_are_tolerated():
    """The two warnings hold for most rows only: up to 10 % of the images may be exact
    duplicates, up to 80 % of the mentions unlinked."""
    dup = ["k0"] + [None] * 9
    unlinked = {"key": [f"k{i}" for i in range(5)], "in_manifest": [True] * 5,
                "start": [0] * 5, "end": [1] * 5, "source": ["ner"] * 5,
                "entity_id": ["A"] + [None] * 4, "link_score": [0.5] * 5}
    rows = run_suites({"m": (_manifest(10, duplicate_of=dup), manifest_suite(10)),
                       "m2": (_manifest(10, duplicate_of=dup[:1] * 2 + dup[2:]),
                              manifest_suite(10)),
                       "n": (pd.DataFrame(unlinked), mentions_suite(KB)),
                       "n2": (pd.DataFrame({**unlinked, "entity_id": [None] * 5}),
                              mentions_suite(KB))}, run="mostly")
    failed = sorted((r["batch"], r["kwargs"].get("column")) for r in rows if not r["success"])
    assert failed == [("m2", "duplicate_of"), ("n2", "entity_id")]


def test_the_least_number_of_images_is_one_for_a_tiny_corpus():
    """min_fraction_of_corpus x corpus under one image still asks for one image, not two."""
    suites = i2e_suites(CFG, RULE, CLASSES, KB, 4)  # int(0.25 x 4) = 1
    rows = run_suites({"one": (_images(1), suites["images"])}, run="tiny")
    assert all(r["success"] for r in rows)


def test_warnings_and_errors_are_told_apart(results):
    severity = {(r["batch"], r["kwargs"].get("column")): r["severity"]
                for r in results("distribution") + results("labels")}
    assert severity[("distribution_at_bounds", "top_entity_share")] == "warning"
    assert severity[("distribution_at_bounds", "imbalance")] == "warning"
    assert severity[("distribution_at_bounds", "corpus_share")] == "error"
    assert severity[("labels_at_floor", "score")] == "error"


def test_without_a_cap_the_entities_have_no_upper_bound():
    suites = i2e_suites(CFG, {**RULE, "max_images_per_entity": 0}, CLASSES, KB, CORPUS)
    (got,) = [r for r in run_suites({"e": (_entities(2, 10**6), suites["entities"])}, run="x")
              if r["kwargs"].get("column") == "images"]
    assert got["success"] and got["kwargs"].get("max_value") is None


def test_distribution_numbers():
    frames = I2EFrames(images=_images(6), labels=pd.DataFrame(),
                       entities=pd.DataFrame({"entity_id": ["A", "B", "C"],
                                              "images": [6, 2, 1]}))
    got = distribution(frames, 24).iloc[0].to_dict()
    assert got == {"corpus_share": 0.25, "top_entity_share": pytest.approx(6 / 9),
                   "imbalance": 3.0, "classes": 3}
    empty = I2EFrames(images=_images(0), labels=pd.DataFrame(),
                      entities=pd.DataFrame({"entity_id": [], "images": []}))
    assert distribution(empty, 0).iloc[0].to_dict() == {
        "corpus_share": 0.0, "top_entity_share": 0.0, "imbalance": 0.0, "classes": 0}


def _gate_inputs(tmp_path, label_scores=(0.5, 0.6, 0.7, 0.8, 0.9, 0.4),
                 entities=("A", "A", "A", "B", "B", "B"), stray=None):
    """The files the gate reads, for a 20-image corpus of which 6 carry labels."""
    import json

    import pyarrow as pa

    from mofi_core.io import tables
    from mofi_core.validate.suites import Inputs

    i2e = tmp_path / "i2e"
    i2e.mkdir(parents=True)
    (i2e / "stats.json").write_text(json.dumps({"rule": RULE}))
    (i2e / "vocab.json").write_text(json.dumps({"classes": CLASSES}))
    keys = [f"k{i}" for i in range(6)]
    if stray == "labels":
        keys[5] = "stray"  # a labelled image the manifest does not hold
    tables.write_table(i2e / "labels.parquet", pa.table({
        "key": keys, "shard": ["00000.tar"] * 6,
        "entity_ids": [[e] for e in entities],
        "scores": [[s] for s in label_scores]}), tables.LABELS)
    kb = tmp_path / "kb.jsonl"
    kb.write_text("\n".join(json.dumps({"entity_id": e, "name": e, "aliases": [],
                                        "description": "", "type": "person"}) for e in KB))
    manifest = tmp_path / "manifest.parquet"
    n = 20
    tables.write_table(manifest, pa.table({
        "key": [f"k{i}" for i in range(n)], "shard": ["00000.tar"] * n, "width": [8] * n,
        "height": [8] * n, "sha256": ["ab" * 32] * n, "text": ["a caption"] * n,
        "duplicate_of": [None] * n}), tables.MANIFEST)
    mentions = tmp_path / "mentions.parquet"
    tables.write_table(mentions, pa.table({
        "key": ["k0", "stray" if stray == "mentions" else "k1"], "mention": ["a", "b"],
        "start": [0, 2], "end": [1, 3],
        "label": ["PERSON", "PERSON"], "source": ["ner", "kb"], "entity_id": ["A", "B"],
        "link_score": [0.5, 0.5]}), tables.MENTIONS)
    scores = tmp_path / "scores.parquet"
    tables.write_table(scores, pa.table({"key": ["k0", "stray" if stray == "scores" else "k0"],
                                         "entity_id": ["A", "B"],
                                         "score": [0.5, 0.1]}), tables.SCORES)
    return Inputs(i2e=i2e, kb=kb, manifest=manifest, mentions=mentions, scores=scores)


def test_the_gate_over_files_counts_every_batch_and_passes(tmp_path):
    import json

    from mofi_core.validate.suites import validate

    inputs = _gate_inputs(tmp_path)
    report = tmp_path / "validate.json"
    summary = validate(inputs, report, CFG)
    assert summary["success"] and summary["failed"] == 0
    assert summary["rows"] == {"manifest": 20, "mentions": 2, "scores": 2, "images": 6,
                               "labels": 6, "entities": 2, "distribution": 1}
    assert summary["per_batch"] == {"manifest": 10, "mentions": 8, "scores": 6, "images": 6,
                                    "labels": 5, "entities": 3, "distribution": 4}
    assert summary["expectations"] == 42 and summary["i2e_expectations"] == 18
    assert summary["warnings"] == 0
    saved = json.loads(report.read_text())
    assert saved["summary"] == summary and len(saved["results"]) == 42
    assert set(saved["checked"]["tables"]) >= {"labels.parquet"}


def test_the_gate_stops_on_an_error_and_only_warns_on_a_warning(tmp_path, capsys):
    from mofi_core.validate.suites import ValidationFailed, validate

    # A holds 4 of 6 labels: over max_entity_share 0.6, a warning only
    summary = validate(_gate_inputs(tmp_path / "w", entities="AAAABB"),
                       tmp_path / "w.json", CFG)
    assert summary["success"] and summary["warnings"] == 1 and summary["failed"] == 0
    out = capsys.readouterr().out
    assert ("validate: WARNING (does not stop the pipeline):\n  - [distribution] "
            "expect_column_values_to_be_between {'column': 'top_entity_share'") in out
    # a label under the rule's score floor (0.3): an error, the gate stops and says which
    report = tmp_path / "e.json"
    with pytest.raises(ValidationFailed) as err:
        validate(_gate_inputs(tmp_path / "e", label_scores=(0.5, 0.6, 0.7, 0.8, 0.9, 0.29),
                              entities="AAAABB"), report, CFG)
    text = str(err.value)
    head, _, rest = text.partition("\n")
    assert "1 of 42 expectations" in head and str(report) in head
    assert rest.startswith("  - [labels] expect_column_values_to_be_between {'column': 'score'")
    assert "(unexpected: 1, observed: None, examples: [0.2899" in text  # float32
    assert "\nwarnings (not blocking):\n  - [distribution]" in text
    assert text.count("\n") == 3  # the head, the error, the warnings' title, the warning
    assert report.is_file()  # written before the gate stops


@pytest.mark.parametrize("table", ["mentions", "scores", "labels"])
def test_rows_of_images_the_manifest_does_not_hold_stop_the_gate(tmp_path, table):
    from mofi_core.validate.suites import ValidationFailed, validate

    batch = {"labels": "images"}.get(table, table)
    with pytest.raises(ValidationFailed) as err:
        validate(_gate_inputs(tmp_path, stray=table), tmp_path / "v.json", CFG)
    assert f"  - [{batch}] expect_column_values_to_be_in_set {{'column': 'in_manifest'" in \
        str(err.value)


def test_the_gate_lists_every_failure_and_returns_its_numbers(tmp_path, monkeypatch):
    import os

    from mofi_core.validate.suites import ValidationFailed, validate

    monkeypatch.delenv("GX_ANALYTICS_ENABLED", raising=False)
    docs = tmp_path / "docs"
    report = tmp_path / "v.json"
    with pytest.raises(ValidationFailed) as err:
        validate(_gate_inputs(tmp_path / "in", label_scores=(0.1, 0.6, 0.7, 0.8, 0.9, 0.2)),
                 report, CFG, docs)
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"  # no telemetry, even if unset
    text = str(err.value)
    head, _, rest = text.partition("\n")
    names(head, "1 of 42 expectations", str(report), str(docs / "index.html"))
    assert rest.startswith("  - [labels] expect_column_values_to_be_between") and \
        "examples: [0.1" in rest and "warnings" not in rest
    assert "\n" not in rest and rest.endswith(")")  # one line per failure, nothing after it
    assert err.value.metrics == {"expectations": 42, "failed": 1, "warnings": 0,
                                 "success": False, "i2e_expectations": 18}
    assert (docs / "index.html").is_file()


def test_a_column_is_matched_by_its_exact_name_not_ignoring_case():
    """GX's pandas backend checks column="KEY" against a column "key" (and passes); the gate
    fails such an expectation and says which column the batch lacks."""
    import great_expectations as gx

    E = gx.expectations
    frame = pd.DataFrame({"key": ["a", "b"], "entity_id": ["A", "B"]})
    rows = run_suites({"b": (frame, [E.ExpectColumnValuesToNotBeNull(column="key"),
                                     E.ExpectColumnValuesToNotBeNull(column="KEY"),
                                     E.ExpectCompoundColumnsToBeUnique(
                                         column_list=["key", "Entity_ID"])])}, run="case")
    assert [r["success"] for r in rows] == [True, False, False]
    assert rows[0]["exception"] is None
    assert rows[1]["exception"] == ("batch 'b' has no column 'KEY' (it has ['entity_id', 'key']); "
                                    "the gate matches column names exactly, where Great "
                                    "Expectations ignores case")
    assert "has no column 'Entity_ID' (" in rows[2]["exception"]
