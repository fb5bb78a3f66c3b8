"""top_k with ner's link scores (build.link_weight): namesakes that CLIP scores alike are ranked
by the text evidence, the threshold still reads the CLIP score, and missing or out-of-sync link
scores are one clear error."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from mofi_core.config.build import BuildConfig
from mofi_core.curate import fdr
from mofi_core.curate.rules import (
    LinkScoresError,
    link_scores,
    link_values,
    rank_value,
    select_labels,
    top_k,
)
from mofi_core.io import tables


def _cfg(**kw) -> BuildConfig:
    return BuildConfig(**{"rules": ("threshold", "top_k"), "threshold": 0.5, "top_k": 1,
                          "min_images_per_entity": 1, "link_weight": 0.0, **kw})


def test_namesakes_tied_by_clip_are_ranked_by_their_link_scores():
    keys, ents, scores = ["k", "k", "k"], ["Q2", "Q1", "Q9"], [0.7, 0.7, 0.4]
    links = [0.8, 0.15, 0.05]  # the text evidence favours Q2
    assert select_labels(keys, ents, scores, _cfg()) == {"k": [("Q1", 0.7), ("Q2", 0.7)]}
    assert select_labels(keys, ents, scores, _cfg(link_weight=0.05), links=links) == {
        "k": [("Q2", 0.7)]}  # the label keeps its CLIP score
    # the weight trades CLIP against the text: a small one does not overturn a clear CLIP win
    scores = [0.6, 0.7, 0.4]
    assert select_labels(keys, ents, scores, _cfg(link_weight=0.05), links=links) == {
        "k": [("Q1", 0.7)]}  # 0.7 + 0.05 log 0.15 = 0.605 > 0.6 + 0.05 log 0.8 = 0.589
    assert select_labels(keys, ents, scores, _cfg(link_weight=0.2), links=links) == {
        "k": [("Q2", 0.6)]}


def test_the_threshold_reads_the_clip_score_not_the_ranking_value():
    # Q1 ranks first by its link score but its CLIP score is under the threshold: no label
    out = select_labels(["k", "k"], ["Q1", "Q2"], [0.45, 0.55], _cfg(link_weight=1.0),
                        links=[1.0, 0.01])
    assert out == {}


def test_equal_ranking_values_are_kept_together_never_cut_by_id():
    cands = [("Q2", 0.7), ("Q1", 0.7), ("Q3", 0.9)]
    assert top_k(cands, 1, rank=[0.5, 0.5, 0.1]) == [("Q1", 0.7), ("Q2", 0.7)]
    assert top_k(cands, 1) == [("Q3", 0.9)]
    assert rank_value(0.7, 0.5, 0.0) == 0.7
    assert rank_value(0.7, 0.0, 0.1) == pytest.approx(0.7 + 0.1 * math.log(1e-6))


def _mentions(path, rows):
    full = [{"mention": "m", "start": i, "end": i + 1, "label": "KB", "source": "kb", **r}
            for i, r in enumerate(rows)]
    tables.write_table(path, tables.from_rows(full, tables.MENTIONS), tables.MENTIONS)


def test_link_scores_take_the_best_mention_and_skip_unlinked_ones(tmp_path):
    _mentions(tmp_path / "m.parquet", [
        {"key": "a", "entity_id": "Q1", "link_score": 0.25},
        {"key": "a", "entity_id": "Q1", "link_score": 0.75},
        {"key": "a", "entity_id": None, "link_score": 0.0},
        {"key": "b", "entity_id": "Q1", "link_score": 1.0}])
    assert link_scores([tmp_path / "m.parquet"]) == {("a", "Q1"): 0.75, ("b", "Q1"): 1.0}


def test_missing_or_out_of_sync_link_scores_are_one_clear_line(tmp_path):
    with pytest.raises(LinkScoresError, match=r"missing\.parquet is missing: run ner"):
        link_scores([tmp_path / "missing.parquet"])
    with pytest.raises(LinkScoresError, match=r"image 'b' has a score for 'Q7' but no ner "
                                              r"mention links it.*re-run score"):
        link_values(["a", "b"], ["Q1", "Q7"], {("a", "Q1"): 1.0})
    with pytest.raises(LinkScoresError, match=r"set build\.link_weight: 0"):
        select_labels(["a"], ["Q1"], [0.9], _cfg(link_weight=0.1))


def test_build_with_a_link_weight_and_no_ner_output_names_it(tmp_path):
    from mofi_core.curate.build import build
    from mofi_core.io.shards import ShardWriter

    with ShardWriter(tmp_path / "ingest" / "shards" / "00000.tar") as w:
        w.write("a", {"jpg": b"x", "txt": "t"})
    tables.write_table(tmp_path / "score" / "parts" / "00000.scores.parquet",
                       pa.Table.from_pylist([{"key": "a", "entity_id": "Q1", "score": 0.9}]),
                       tables.SCORES)
    with pytest.raises(LinkScoresError, match=r"ner/parts/00000\.parquet is missing"):
        build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e", _cfg(link_weight=0.1),
              ner_dir=tmp_path / "ner")
    assert not (tmp_path / "i2e").exists()  # nothing half-written


def test_label_free_ranks_follow_the_link_weighted_order(tmp_path):
    (tmp_path / "score" / "parts").mkdir(parents=True)
    tables.write_table(tmp_path / "score" / "parts" / "00000.scores.parquet", pa.Table.from_pylist(
        [{"key": "a", "entity_id": "Q1", "score": 0.7},
         {"key": "a", "entity_id": "Q2", "score": 0.7}]), tables.SCORES)
    _mentions(tmp_path / "ner" / "parts" / "00000.parquet", [
        {"key": "a", "entity_id": "Q1", "link_score": 0.2},
        {"key": "a", "entity_id": "Q2", "link_score": 0.8}])
    plain, _ = fdr.read_candidates(tmp_path / "score")
    assert plain.rank is None and fdr.ranks(plain).tolist() == [[0, 0]]  # a tie
    linked, _ = fdr.read_candidates(tmp_path / "score", ner_dir=tmp_path / "ner",
                                    link_weight=0.1)
    assert fdr.ranks(linked).tolist() == [[1, 0]]
    np.testing.assert_allclose(linked.scores, plain.scores)  # the scores themselves unchanged
    with pytest.raises(LinkScoresError, match="give the ner folder"):
        fdr.read_candidates(tmp_path / "score", link_weight=0.1)


def test_the_label_free_prior_follows_the_link_scores():
    """Namesakes scored alike split the posterior by their link scores, not evenly."""
    rng = np.random.default_rng(0)
    keys, ents, scores, links = [], [], [], []
    for i in range(400):  # each image: its depicted namesake (link 0.9) and another (0.1)
        s = float(rng.uniform(0.5, 0.9))
        keys += [f"k{i}", f"k{i}"]
        ents += ["Q1", "Q2"]
        scores += [s, s]
        links += [0.9, 0.1]
    decoys = rng.uniform(-0.2, 0.4, 4000)
    uniform = fdr.Candidates.from_rows(keys, ents, scores)
    linked = fdr.Candidates.from_rows(keys, ents, scores, links, link_weight=0.1)
    assert uniform.prior() is None
    np.testing.assert_allclose(linked.prior(), [[0.9, 0.1]] * 400)
    post_u = fdr.fit(uniform, decoys).posteriors(uniform)
    post_l = fdr.fit(linked, decoys).posteriors(linked)
    np.testing.assert_allclose(post_u[:, 0], post_u[:, 1])  # a coin toss between the two
    np.testing.assert_allclose(post_l[:, 0] / post_l[:, 1], 9.0, rtol=1e-9)
    assert post_l[:, 0].mean() > 0.85 and post_u[:, 0].mean() <= 0.5 + 1e-12
