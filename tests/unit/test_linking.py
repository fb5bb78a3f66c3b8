"""Linking: candidates ranked by evidence that needs no image, the best few kept, ties at the cut
never settled by order."""

from __future__ import annotations

import math

import pytest

from mofi_core.curate.linking import EVIDENCE, Candidate, evidence, rank, words

TOWER = Candidate("Q1", False, "landmark", 3, "historic tower near Norvik")
MOTORS = Candidate("Q2", False, "organization", 40, "car company in Trelstad")
ONLY = {"type": 1.0}


def test_old_weights_are_a_special_case():
    """Type fit 2x/0.5x and a co-mention 3x, normalised (the former rule), are the softmax of
    log-weights: ln 2 per unit of type fit, ln 3 for a co-mention."""
    w = {"type": math.log(2), "co_mention": math.log(3)}
    assert [s for _, s in rank([TOWER, MOTORS], "ORG", set(), set(), w, 8)] == \
        pytest.approx([0.8, 0.2])  # best first: the carmaker fits ORG (2 vs 0.5 -> 0.8, 0.2)
    got = dict(rank([TOWER, MOTORS], "KB", {"Q1"}, set(), w, 8))
    assert got == pytest.approx({"Q1": 0.75, "Q2": 0.25})  # 3 vs 1, no type evidence


def test_each_kind_of_evidence_by_hand():
    cands = [TOWER, Candidate("Q3", True, "person", 0, "painter from Norvik")]
    m = evidence(cands, "PERSON", {"Q1"}, words("the painter at dusk, Norvik"))
    assert EVIDENCE == ("prior", "name", "type", "co_mention", "context")
    assert m.tolist() == [[math.log(4), 0.0, -1.0, 1.0, 1.0],   # norvik
                          [0.0, 1.0, 1.0, 0.0, 2.0]]            # painter, norvik
    assert words("The PHOTO of 3 Kelvara-Towers, at 5pm") == {"kelvara", "towers"}


def test_the_best_are_kept_and_a_tie_at_the_cut_keeps_every_tied_candidate():
    cands = [Candidate(f"Q{i}", False, "person", p, "") for i, p in
             enumerate([1, 50, 7, 7, 7, 1])]
    kept = rank(cands, "PERSON", set(), set(), {"prior": 1.0}, 2)
    assert [e for e, _ in kept] == ["Q1", "Q2", "Q3", "Q4"]  # 50, then the three 7s
    assert sum(s for _, s in kept) == pytest.approx(1.0)
    assert [e for e, _ in rank(cands, "PERSON", set(), set(), {"prior": 1.0}, 1)] == ["Q1"]
    # no evidence at all: every candidate ties, none is dropped by its place in the KB
    assert len(rank(cands, "PERSON", set(), set(), ONLY, 2)) == 6


def test_context_words_find_the_painter_among_namesakes():
    painter = Candidate("Q7", True, "person", 1, "painter from Norvik")
    others = [Candidate(f"Q{i}", True, "person", 30, "footballer from Trelstad")
              for i in range(10, 20)]
    w = {"prior": 1.0, "type": 2.0, "context": 2.0}
    assert rank([*others, painter], "PERSON", set(), words("Norvik painter at work"), w, 1) == \
        [("Q7", 1.0)]
    assert rank([*others, painter], "PERSON", set(), set(), w, 1)[0][0] != "Q7"
    assert rank([], "PERSON", set(), set(), w, 3) == []
