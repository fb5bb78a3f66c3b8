import pyarrow as pa
import pytest

from mofi_core.evaluate.quality import label_quality, paper_direction, precision_recall


def test_precision_recall_by_hand():
    truth = {("a", "X"), ("b", "Y"), ("c", "Z")}
    pred = {("a", "X"), ("b", "X")}
    assert precision_recall(pred, truth) == {"precision": 0.5, "recall": pytest.approx(1 / 3),
                                             "pairs": 2}
    assert precision_recall(set(), truth)["precision"] == 0.0


def test_label_quality_counts_only_ingested_keys_and_linked_mentions():
    truth = pa.table({"key": ["a", "b", "gone"], "entity_ids": [["X"], ["Y", "Z"], ["X"]]})
    mentions = pa.table({"key": ["a", "a", "b"], "entity_id": ["X", None, "W"]})
    labels = pa.table({"key": ["a", "b"], "entity_ids": [["X"], ["Y"]]})
    q = label_quality(truth, {"a", "b"}, mentions, labels)
    assert q["raw_ner"] == {"precision": 0.5, "recall": pytest.approx(1 / 3), "pairs": 2}
    assert q["filtered"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "pairs": 2}


def test_paper_direction_verdicts():
    q = {"raw_ner": {"precision": 0.5}, "filtered": {"precision": 0.8}}
    ev = {"mofi": {"gpr_map": 0.3}, "baseline": {"gpr_map": 0.4}}
    assert paper_direction(q, ev) == [("filtering raises label precision", True),
                                      ("entity supervision beats the alt-text CLIP on retrieval "
                                       "mAP", False)]
