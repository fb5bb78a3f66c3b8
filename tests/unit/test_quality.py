import pyarrow as pa
import pytest

from mofi_core.report import label_quality, paper_direction, precision_recall


def test_precision_recall_by_hand():
    truth = {("a", "X"), ("b", "Y"), ("c", "Z")}
    pred = {("a", "X"), ("b", "X")}
    assert precision_recall(pred, truth) == {"precision": 0.5, "recall": pytest.approx(1 / 3),
                                             "pairs": 2}
    assert precision_recall(set(), truth)["precision"] == 0.0


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


def test_linking_accuracy_counts_ambiguous_mentions_with_a_right_candidate():
    from mofi_core.report import linking_accuracy

    mentions = pa.table({
        "key": ["a", "a", "b", "b", "c", "c", "d"], "start": [0, 0, 3, 3, 0, 0, 0],
        "entity_id": ["X", "Y", "X", "Y", "P", "Q", "X"],
        "link_score": [0.8, 0.2, 0.3, 0.7, 0.5, 0.5, 1.0]})
    true = {("a", "X"), ("b", "X"), ("d", "X")}  # c has no right candidate, d is unambiguous
    assert linking_accuracy(mentions, true) == {"ambiguous_mentions": 2, "top_link_right": 0.5}


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
