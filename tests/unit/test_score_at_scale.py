"""What scoring does when the KB holds namesakes: their texts differ, decoys look like the
confusers they stand for, and a tie between candidates is never settled by their order."""

from __future__ import annotations

from functools import partial

import numpy as np

from mofi_core.config.build import BuildConfig
from mofi_core.config.score import ScoreConfig
from mofi_core.curate.rules import select_labels, top_k
from mofi_core.curate.score import entity_texts, null_pool
from mofi_core.kb.store import KBEntity, KnowledgeBase

# the rules on CLIP scores alone: these tests have no ner output (no link scores)
ClipOnly = partial(BuildConfig, link_weight=0.0)

KB = KnowledgeBase([
    KBEntity("Q1", "Anna Brandson", ("Brandson",), "painter from Norvik", "person", 3),
    KBEntity("Q2", "Anna Brandson", (), "footballer from Trelstad", "person", 90),
    KBEntity("Q3", "Port Velmora", (), "", "place", 1),
    *(KBEntity(f"Q{i}", f"Person {i}", (), "", "person", 1) for i in range(10, 40)),
    *(KBEntity(f"Q{i}", f"Place {i}", (), "", "place", 1) for i in range(40, 70)),
])


def test_namesakes_get_texts_that_tell_them_apart():
    texts = entity_texts(KB, ["Q1", "Q2", "Q3"], ("a photo of {name}.",),
                         ("a photo of {name}, {description}.",))
    assert texts == [["a photo of Anna Brandson, painter from Norvik."],
                     ["a photo of Anna Brandson, footballer from Trelstad."],
                     ["a photo of Port Velmora."]]  # a name no one shares keeps the plain text


def test_decoys_come_from_the_candidates_types_across_the_whole_kb():
    pools = null_pool(KB, ScoreConfig(null_pool=8, decoys="type"))
    assert set(pools) == {"person", "place"}
    assert all(len(ids) == 8 for ids in pools.values())
    assert all(KB.get(e).type == t for t, ids in pools.items() for e in ids)
    assert null_pool(KB, ScoreConfig(null_pool=8, decoys="type", seed=1)) != pools  # a sample
    uniform = null_pool(KB, ScoreConfig(null_pool=8))
    assert set(uniform) == {""} and len(uniform[""]) == 8
    assert null_pool(KB, ScoreConfig(null_samples=0)) == {}


def test_top_k_keeps_every_candidate_tied_with_the_kth():
    cands = [("Q2", 0.7), ("Q1", 0.7), ("Q9", 0.4)]
    assert top_k(cands, 1) == [("Q1", 0.7), ("Q2", 0.7)]  # not Q1 alone for its smaller id
    assert top_k(cands, 2) == [("Q1", 0.7), ("Q2", 0.7)]
    assert top_k(cands, 5) == [("Q1", 0.7), ("Q2", 0.7), ("Q9", 0.4)]
    assert top_k([("Q1", 0.9), ("Q2", 0.7)], 1) == [("Q1", 0.9)]
    labels = select_labels(["k", "k", "k"], ["Q2", "Q1", "Q9"], [0.7, 0.7, 0.4],
                           ClipOnly(rules=("top_k",), top_k=1, min_images_per_entity=1))
    assert labels == {"k": [("Q1", 0.7), ("Q2", 0.7)]}
    assert np.isfinite([s for _, s in labels["k"]]).all()
