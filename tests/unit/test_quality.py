import pyarrow as pa
import pytest

from mofi_core.report import label_quality, paper_direction, precision_recall


def test_precision_recall_by_hand():
    truth = {("a", "X"), ("b", "Y"), ("c", "Z")}
    pred = {("a", "X"), ("b", "X")}
    assert precision_recall(pred, truth) == {"precision": 0.5, "recall": pytest.approx(1 / 3),
                                             "pairs": 2}
    assert precision_recall(set(), truth)["precision"] == 0.0


def test_precision_recall_at_the_empty_edges():
    assert precision_recall(set(), set()) == {"precision": 0.0, "recall": 0.0, "pairs": 0}
    assert precision_recall({("a", "X")}, set()) == {"precision": 0.0, "recall": 0.0,
                                                      "pairs": 1}
    # nothing reachable: the filter could keep nothing, its recall is reported as 0
    assert precision_recall({("a", "X")}, {("a", "X")}, set())["filter_recall"] == 0.0
    got = precision_recall({("a", "X"), ("b", "Y")}, {("a", "X"), ("c", "Z")},
                           {("a", "X"), ("c", "Z"), ("d", "W"), ("e", "V")})
    assert got == {"precision": 0.5, "recall": 0.5, "pairs": 2, "filter_recall": 0.25}


def test_label_quality_counts_only_ingested_keys_and_linked_mentions():
    truth = pa.table({"key": ["a", "b", "gone"], "entity_ids": [["X"], ["Y", "Z"], ["X"]]})
    mentions = pa.table({"key": ["a", "a", "b"], "start": [0, 5, 0],
                         "entity_id": ["X", None, "W"], "link_score": [1.0, 0.0, 1.0]})
    labels = pa.table({"key": ["a", "b"], "entity_ids": [["X"], ["Y"]]})
    q = label_quality(truth, {"a", "b"}, mentions, labels)
    assert q["raw_ner"] == {"precision": 0.5, "recall": pytest.approx(1 / 3), "pairs": 2}
    # NER found only (a, X) of the true pairs: the filter kept it -> filter recall 1
    assert q["filtered"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "pairs": 2,
                             "filter_recall": 1.0}
    assert q["linking"] == {"ambiguous_mentions": 0, "top_link_right": 0.0}
    assert set(q) == {"raw_ner", "filtered", "linking"}


def test_linking_accuracy_counts_ambiguous_mentions_with_a_right_candidate():
    from mofi_core.report import linking_accuracy

    mentions = pa.table({
        "key": ["a", "a", "b", "b", "c", "c", "d"], "start": [0, 0, 3, 3, 0, 0, 0],
        "entity_id": ["X", "Y", "X", "Y", "P", "Q", "X"],
        "link_score": [0.8, 0.2, 0.3, 0.7, 0.5, 0.5, 1.0]})
    true = {("a", "X"), ("b", "X"), ("d", "X")}  # c has no right candidate, d is unambiguous
    assert linking_accuracy(mentions, true) == {"ambiguous_mentions": 2, "top_link_right": 0.5}


def test_linking_accuracy_ties_unlinked_rows_and_no_ambiguity():
    from mofi_core.report import linking_accuracy

    # a tie in link score goes to the larger entity id; an unlinked row in between is skipped
    mentions = pa.table({
        "key": ["a", "a", "a", "b", "b"], "start": [0, 0, 0, 0, 0],
        "entity_id": ["Q2", None, "Q1", "Q1", "Q2"], "link_score": [0.5, 0.9, 0.5, 0.5, 0.5]})
    assert linking_accuracy(mentions, {("a", "Q2"), ("b", "Q1")}) == {
        "ambiguous_mentions": 2, "top_link_right": 0.5}
    one = pa.table({"key": ["a"], "start": [0], "entity_id": ["Q1"], "link_score": [1.0]})
    assert linking_accuracy(one, {("a", "Q1")}) == {"ambiguous_mentions": 0,
                                                    "top_link_right": 0.0}


def test_paper_direction_verdicts():
    q = {"raw_ner": {"precision": 0.5}, "filtered": {"precision": 0.8}}
    ev = {"supervised": {"gpr_map": 0.5}, "multitask": {"gpr_map": 0.3, "probe_top1": 0.7},
          "baseline": {"gpr_map": 0.4, "probe_top1": 0.6, "zero_shot_top1": 0.2}}
    # zero-shot: the multitask block lacks it, so that claim is not applicable (absent)
    assert paper_direction(q, ev) == [("filtering_raises_precision", True),
                                      ("supervised_beats_control_retrieval", True),
                                      ("multitask_ge_supervised_retrieval", False),
                                      ("mofi_beats_control_retrieval", False),
                                      ("mofi_beats_control_linear_probe", True)]


def test_equal_precision_is_not_a_rise():
    q = {"raw_ner": {"precision": 0.5}, "filtered": {"precision": 0.5}}
    assert paper_direction(q, {}) == [("filtering_raises_precision", False)]


def test_a_tie_holds_only_the_at_least_as_good_claim():
    ev = {"supervised": {"gpr_map": 0.5}, "multitask": {"gpr_map": 0.5},
          "baseline": {"gpr_map": 0.5}}
    assert dict(paper_direction({}, ev)) == {"supervised_beats_control_retrieval": False,
                                             "multitask_ge_supervised_retrieval": True,
                                             "mofi_beats_control_retrieval": False}


def test_the_report_names_mofi_and_prints_each_claim_with_its_numbers():
    from mofi_core.report import report_markdown

    ev = {"multitask": {"gpr_map": 0.61, "recall_at_1": 0.9, "zero_shot_top1": 0.3},
          "baseline": {"gpr_map": 0.42, "recall_at_1": 0.8, "zero_shot_top1": 0.35}}
    md = report_markdown({}, ev)
    assert "| MOFI (multitask) | 0.6100 | n/a | n/a | 0.9000 | 0.3000 | n/a |" in md
    assert ("MOFI beats the alt-text CLIP on retrieval mAP: **held** (gpr_map 0.6100 vs "
            "0.4200)") in md
    assert ("MOFI beats the alt-text CLIP on zero-shot top-1: **not held** (zero_shot_top1 "
            "0.3000 vs 0.3500)") in md


GOLDEN_QUALITY = {
    "raw_ner": {"precision": 0.5, "recall": 0.6, "pairs": 100},
    "filtered": {"precision": 0.95, "recall": 0.4, "pairs": 40, "filter_recall": 0.8},
    "rules": {"threshold_and_top_k": {"precision": 0.9, "recall": 0.45, "pairs": 50,
                                      "filter_recall": 0.75}},
    "linking": {"ambiguous_mentions": 7, "top_link_right": 0.5714}}
GOLDEN_EVALUATION = {
    "supervised": {"gpr_map": 0.4, "gpr_map_seen": 0.5, "gpr_map_unseen": 0.3,
                   "recall_at_1": 0.7, "probe_top1": 0.6},
    "multitask": {"gpr_map": 0.45, "gpr_map_seen": 0.55, "gpr_map_unseen": 0.35,
                  "recall_at_1": 0.75, "zero_shot_top1": 0.2, "probe_top1": 0.65},
    "baseline": {"gpr_map": 0.3, "gpr_map_seen": 0.35, "gpr_map_unseen": 0.25,
                 "recall_at_1": 0.6, "zero_shot_top1": 0.25, "probe_top1": 0.5}}
# what a reader sees, whole: every number in its column, the goal exactly at its bounds (met)
GOLDEN = """\
# MOFI demo-world report

## Entity labels vs ground truth ((image, entity) pairs)

Recall counts every true pair; *filter recall* only those NER + linking found (what the CLIP \
filter could keep: alt-texts naming nothing cap the first).

| step | pairs | precision | recall | filter recall |
|---|---|---|---|---|
| NER + linking (all candidates) | 100 | 50.0% | 60.0% | — |
| after CLIP filter + min images (I2E) | 40 | 95.0% | 40.0% | 80.0% |
| rule `threshold + top_k` (same candidates, same min images) | 50 | 90.0% | 45.0% | 75.0% |

Linking: 7 ambiguous mentions with a right candidate among those sent to CLIP; the top link \
score picks a right one in 57.1%.

Goal (precision >= 95.0% at filter recall >= 80.0%): **met** (95.0% at 80.0%).

## Every model on the benchmark (GPR1200 protocol)

| model | mAP all | seen classes | unseen classes | R@1 | zero-shot top-1 | linear probe top-1 |
|---|---|---|---|---|---|---|
| supervised | 0.4000 | 0.5000 | 0.3000 | 0.7000 | n/a | 0.6000 |
| MOFI (multitask) | 0.4500 | 0.5500 | 0.3500 | 0.7500 | 0.2000 | 0.6500 |
| control CLIP (alt-text) | 0.3000 | 0.3500 | 0.2500 | 0.6000 | 0.2500 | 0.5000 |

## Does the paper's direction hold? (this run: one seed)

- filtering raises label precision: **held** (95.0% vs 50.0%)
- supervised on I2E beats the alt-text CLIP on retrieval mAP: **held** (gpr_map 0.4000 vs 0.3000)
- multi-task is at least as good as supervised on retrieval mAP: **held** (gpr_map 0.4500 vs \
0.4000)
- MOFI beats the alt-text CLIP on retrieval mAP: **held** (gpr_map 0.4500 vs 0.3000)
- MOFI beats the alt-text CLIP on zero-shot top-1: **not held** (zero_shot_top1 0.2000 vs \
0.2500)
- MOFI beats the alt-text CLIP on linear-probe top-1: **held** (probe_top1 0.6500 vs 0.5000)
"""


def test_the_whole_report_as_a_reader_sees_it():
    from mofi_core.report import report_markdown

    assert report_markdown(GOLDEN_QUALITY, GOLDEN_EVALUATION) == GOLDEN


@pytest.mark.parametrize(("precision", "filter_recall", "verdict"), [
    (0.95, 0.8, "met"), (0.9499, 0.8, "not met"), (0.95, 0.7999, "not met")])
def test_the_label_goal_at_its_bounds(precision, filter_recall, verdict):
    from mofi_core.report import report_markdown

    q = {**GOLDEN_QUALITY, "filtered": {**GOLDEN_QUALITY["filtered"], "precision": precision,
                                        "filter_recall": filter_recall}}
    assert f"filter recall >= 80.0%): **{verdict}** (" in report_markdown(q, {})


def test_a_report_without_truth_says_why_and_claims_nothing_about_labels():
    from mofi_core.report import report_markdown

    why = "no ground truth: corpus.source is none (your own corpus)"
    md = report_markdown({"truth": why}, {"baseline": {"gpr_map": 0.3}})
    assert md.startswith(f"# MOFI demo-world report\n\nLabel quality against ground truth: not "
                         f"scored ({why}).\n\n\n## Every model")
    assert "| control CLIP (alt-text) | 0.3000 | n/a | n/a | n/a | n/a | n/a |" in md
    assert "filtering raises" not in md and "Entity labels" not in md
    assert "not scored" not in report_markdown({}, {})
    flat = {"raw_ner": {"precision": 0.5, "recall": 0.5, "pairs": 1},
            "filtered": {"precision": 0.5, "recall": 0.5, "pairs": 1, "filter_recall": 1.0}}
    assert "- filtering raises label precision: **not held** (50.0% vs 50.0%)" in \
        report_markdown(flat, {})


def test_threshold_choice_kinds():
    from mofi_core.report import threshold_choice

    assert threshold_choice({"threshold": 0.6, "calibration_seed": None}, 3) == {
        "threshold": 0.6, "calibration_seed": None, "report_seed": 3, "kind": "by hand"}
    assert threshold_choice({"threshold": 0.6, "calibration_seed": 3}, 3)["kind"] == "in-sample"
    assert threshold_choice({"threshold": 0.6, "calibration_seed": 4}, 3) == {
        "threshold": 0.6, "calibration_seed": 4, "report_seed": 3, "kind": "held out"}
    assert threshold_choice({}, 0) == {"threshold": None, "calibration_seed": None,
                                       "report_seed": 0, "kind": "by hand"}


def test_decontam_quality_counts_each_planted_kind(tmp_path):
    import json

    from mofi_core.report import decontam_quality

    dropped = pa.table({"key": ["p1", "p2", "clean1", "p1"]})
    metrics = {"method": "phash", "checked": 40}
    assert decontam_quality(dropped, metrics, None) == {"method": "phash", "checked": 40,
                                                        "dropped": 3}
    assert decontam_quality(dropped, {}, tmp_path) == {"method": None, "checked": 0,
                                                       "dropped": 3}  # no planted.json
    (tmp_path / "planted.json").write_text(json.dumps([
        {"key": "p1", "kind": "crop"}, {"key": "p2", "kind": "crop"},
        {"key": "p3", "kind": "recolour"}, {"key": "p4", "kind": "crop"}]))
    got = decontam_quality(dropped, metrics, tmp_path)
    assert got == {"method": "phash", "checked": 40, "dropped": 3, "planted": {
        "planted": 4, "caught": 2, "clean_dropped": 1,
        "by_kind": {"crop": {"planted": 3, "caught": 2}, "recolour": {"planted": 1,
                                                                       "caught": 0}}}}


def test_read_truth_concatenates_every_shard_in_order(tmp_path):
    from mofi_core.io import tables
    from mofi_core.report import read_truth

    with pytest.raises(FileNotFoundError, match=r"no ground truth in .*corpus.source"):
        read_truth(tmp_path)
    tables.write_table(tmp_path / "00001.parquet", pa.table(
        {"key": ["b"], "entity_ids": [["Y"]]}, schema=tables.TRUTH), tables.TRUTH)
    tables.write_table(tmp_path / "00000.parquet", pa.table(
        {"key": ["a"], "entity_ids": [["X", "Z"]]}, schema=tables.TRUTH), tables.TRUTH)
    assert read_truth(tmp_path).to_pylist() == [{"key": "a", "entity_ids": ["X", "Z"]},
                                                {"key": "b", "entity_ids": ["Y"]}]


def _scores(folder, rows, null=None):
    from mofi_core.io import tables

    folder.mkdir(parents=True, exist_ok=True)
    tables.write_table(folder / "scores.parquet", pa.table(
        {"key": [r[0] for r in rows], "entity_id": [r[1] for r in rows],
         "score": [r[2] for r in rows]}, schema=tables.SCORES), tables.SCORES)
    if null is not None:
        tables.write_table(folder / "null.parquet", pa.table(
            {"key": list(null), "scores": list(null.values())}, schema=tables.NULL_SCORES),
            tables.NULL_SCORES)
    return folder


def test_rule_variants_score_each_rule_alone_and_the_applied_combination(tmp_path):
    from mofi_core.report import rule_variants

    rows = [("a", "X", 0.9), ("a", "Y", 0.8), ("b", "X", 0.5), ("b", "Z", 0.7),
            ("c", "Y", 0.65)]
    true = {("a", "X"), ("a", "Y"), ("b", "X"), ("c", "Y"), ("d", "W")}
    rule = {"rules": ["threshold", "top_k"], "threshold": 0.6, "top_k": 1,
            "min_images_per_entity": 1, "max_images_per_entity": 0, "null_quantile": 0.5,
            "score_floor": 0.6, "target_fdr": 0.05}
    got = rule_variants(rule, _scores(tmp_path / "s", rows), true)
    # threshold alone keeps a/X a/Y b/Z c/Y; top_k alone a/X b/Z c/Y; both a/X b/Z c/Y
    assert got == {
        "threshold": {"precision": 0.75, "recall": 0.6, "pairs": 4, "filter_recall": 0.75},
        "top_k": {"precision": pytest.approx(2 / 3), "recall": 0.4, "pairs": 3,
                  "filter_recall": 0.5},
        "threshold_and_top_k": {"precision": pytest.approx(2 / 3), "recall": 0.4, "pairs": 3,
                                "filter_recall": 0.5}}
    # with null scores: null_quantile alone keeps what beats the image's own median null
    null = {"a": [0.85, 0.95, 0.1], "b": [0.6, 0.2, 0.3], "c": [0.7, 0.7, 0.7]}
    got = rule_variants({**rule, "rules": ["null_quantile"]},
                        _scores(tmp_path / "n", rows, null), true)
    assert list(got) == ["threshold", "top_k", "null_quantile"]  # the combination is itself
    # medians 0.85, 0.3, 0.7: a/X (0.9), b/X (0.5) and b/Z (0.7) pass; c/Y (0.65) does not
    assert got["null_quantile"] == {"precision": pytest.approx(2 / 3), "recall": 0.4,
                                    "pairs": 3, "filter_recall": 0.5}


def test_null_cutoffs_are_the_quantile_of_each_images_null_scores(tmp_path):
    from mofi_core.curate.rules import null_cutoffs

    folder = _scores(tmp_path, [("a", "X", 0.5)], {"a": [0.0, 1.0, 2.0, 3.0], "b": [5.0]})
    assert null_cutoffs(folder / "null.parquet", 0.5) == {"a": 1.5, "b": 5.0}
    assert null_cutoffs(folder / "null.parquet", 0.75) == {"a": 2.25, "b": 5.0}


def test_the_optional_paragraphs_go_where_they_belong():
    from mofi_core.report import _choice_line, _decontam_lines, _label_free_lines, report_markdown

    choice = {"threshold": 0.6, "calibration_seed": 4, "report_seed": 3, "kind": "held out"}
    free = {"available": False, "reason": "score.decoys is 0"}
    decontam = {"method": "phash", "checked": 40, "dropped": 3}
    quality = {**GOLDEN_QUALITY, "truth": "the demo world w1", "threshold_choice": choice,
               "label_free": free, "decontam": decontam}
    lines = GOLDEN.rstrip("\n").split("\n")
    cut = lines.index("## Every model on the benchmark (GPR1200 protocol)") - 1
    want = [*lines[:cut], "", _choice_line(choice), *_label_free_lines(free),
            *_decontam_lines(decontam), *lines[cut:]]
    assert report_markdown(quality, GOLDEN_EVALUATION) == "\n".join(want) + "\n"
    assert "held out" in _choice_line(choice) and "score.decoys is 0" in "".join(
        _label_free_lines(free)) and "3 of 40" in "".join(_decontam_lines(decontam))
