import pytest

from mofi_core.config import BuildConfig
from mofi_core.curate.rules import select_labels


def test_threshold_then_min_images_then_empty_images_dropped():
    keys = ["a", "a", "b", "c", "d", "e"]
    ents = ["X", "Y", "X", "Y", "Z", "X"]
    scores = [0.9, 0.1, 0.5, 0.6, 0.95, 0.3]
    out = select_labels(keys, ents, scores, BuildConfig(threshold=0.3, min_images_per_entity=2))
    # X: a, b, e pass (3 images); Y: only c passes (1 < 2) -> dropped; Z: 1 image -> dropped
    assert out == {"a": [("X", 0.9)], "b": [("X", 0.5)], "e": [("X", 0.3)]}


def test_multi_label_images_keep_every_passing_entity_sorted():
    out = select_labels(["a", "a", "b", "b"], ["Y", "X", "X", "Y"], [0.5, 0.6, 0.7, 0.8],
                        BuildConfig(rules=("threshold",), threshold=0.0, min_images_per_entity=1))
    assert out == {"a": [("X", 0.6), ("Y", 0.5)], "b": [("X", 0.7), ("Y", 0.8)]}


def test_threshold_bounds_are_validated():
    with pytest.raises(ValueError):
        BuildConfig(threshold=1.5)


def _cfg(**kw):
    return BuildConfig(min_images_per_entity=1, **kw)


def test_top_k_keeps_the_best_candidates_of_each_image():
    out = select_labels(["a", "a", "a", "b"], ["X", "Y", "Z", "X"], [0.2, 0.9, 0.5, 0.1],
                        _cfg(rules=("top_k",), top_k=2))
    assert out == {"a": [("Y", 0.9), ("Z", 0.5)], "b": [("X", 0.1)]}


def test_null_quantile_uses_each_images_own_cutoff():
    out = select_labels(["a", "a", "b"], ["X", "Y", "X"], [0.6, 0.4, 0.45],
                        _cfg(rules=("null_quantile",)), null_cut={"a": 0.5, "b": 0.3})
    assert out == {"a": [("X", 0.6)], "b": [("X", 0.45)]}
    with pytest.raises(ValueError, match="null_samples"):
        select_labels(["c"], ["X"], [0.9], _cfg(rules=("null_quantile",)), null_cut={})


def test_rules_combine_with_and():
    out = select_labels(["a", "a", "b", "b"], ["X", "Y", "X", "Y"], [0.6, 0.5, 0.2, 0.1],
                        _cfg(rules=("top_k", "threshold"), top_k=1, threshold=0.3))
    assert out == {"a": [("X", 0.6)]}  # b's best (0.2) fails the threshold


def test_cap_per_entity_keeps_its_best_images():
    out = select_labels(["a", "b", "c"], ["X", "X", "X"], [0.5, 0.9, 0.7],
                        _cfg(rules=("threshold",), threshold=0.0, max_images_per_entity=2))
    assert out == {"b": [("X", 0.9)], "c": [("X", 0.7)]}


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError):
        BuildConfig(rules=("magic",))


def test_streaming_build_over_shards_equals_select_labels_on_everything(tmp_path):
    """build works shard by shard; the vocabulary and the per-entity cap are global, so the
    result must equal the in-memory rule on the whole table (ties included)."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mofi_core.curate.build import build
    from mofi_core.io import tables
    from mofi_core.io.shards import ShardWriter

    rng = random.Random(3)
    ents = [f"E{i}" for i in range(8)]
    all_rows = []
    for shard in range(3):
        rows = []
        with ShardWriter(tmp_path / "ingest" / "shards" / f"{shard:05d}.tar") as w:
            for i in range(40):
                key = f"k{shard}-{i:02d}"
                w.write(key, {"jpg": b"x", "txt": "t"})
                for e in rng.sample(ents, rng.randint(1, 3)):
                    rows.append({"key": key, "entity_id": e,
                                 "score": rng.choice([0.2, 0.5, 0.5, 0.7, 0.9])})
        tables.write_table(tmp_path / "score" / "parts" / f"{shard:05d}.scores.parquet",
                           pa.Table.from_pylist(rows), tables.SCORES)
        all_rows += rows
    cfg = BuildConfig(rules=("threshold", "top_k"), threshold=0.4, top_k=2,
                      min_images_per_entity=12, max_images_per_entity=15)
    stats = build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e", cfg)
    scores = pa.Table.from_pylist(all_rows, tables.SCORES)  # float32, as build reads them
    want = select_labels(scores["key"].to_pylist(), scores["entity_id"].to_pylist(),
                         scores["score"].to_pylist(), cfg)
    got = {r["key"]: list(zip(r["entity_ids"], r["scores"], strict=True))
           for r in pq.read_table(tmp_path / "i2e" / "labels.parquet").to_pylist()}
    assert {k: [e for e, _ in v] for k, v in got.items()} == \
        {k: [e for e, _ in v] for k, v in want.items()}
    assert stats["images"] == len(want) and stats["max_images_per_entity"] <= 15
    assert not (tmp_path / "i2e" / ".pass1").exists()


def test_rule_edges_ties_and_equalities():
    # a score equal to the threshold passes; equal to the image's null cut-off does not
    assert select_labels(["a"], ["X"], [0.3], _cfg(rules=("threshold",), threshold=0.3)) == {
        "a": [("X", 0.3)]}
    assert select_labels(["a"], ["X"], [0.5], _cfg(rules=("null_quantile",)),
                         null_cut={"a": 0.5}) == {}
    # top_k: equal scores go to the smaller entity id
    out = select_labels(["a", "a", "a"], ["Z", "X", "Y"], [0.5, 0.5, 0.5],
                        _cfg(rules=("top_k",), top_k=2))
    assert out == {"a": [("X", 0.5), ("Y", 0.5)]}
    # the cap per entity: equal scores go to the smaller key
    out = select_labels(["c", "a", "b"], ["X", "X", "X"], [0.5, 0.5, 0.5],
                        _cfg(rules=("top_k",), max_images_per_entity=2))
    assert out == {"a": [("X", 0.5)], "b": [("X", 0.5)]}


def test_an_entity_with_exactly_min_images_is_kept_one_fewer_is_dropped():
    keys = ["a", "b", "c", "d", "e"]
    ents = ["X", "X", "Y", "Y", "Y"]
    out = select_labels(keys, ents, [0.9] * 5, BuildConfig(rules=("threshold",), threshold=0.0,
                                                           min_images_per_entity=3))
    assert out == {"c": [("Y", 0.9)], "d": [("Y", 0.9)], "e": [("Y", 0.9)]}
    out = select_labels(keys, ents, [0.9] * 5, BuildConfig(rules=("threshold",), threshold=0.0,
                                                           min_images_per_entity=2))
    assert set(out) == set(keys)


def test_min_images_counts_across_shards(tmp_path):
    """Y has exactly min_images_per_entity images, one in each shard: kept; X has one fewer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mofi_core.curate.build import build
    from mofi_core.io import tables
    from mofi_core.io.shards import ShardWriter

    per_shard = [[("a", "Y"), ("b", "X")], [("c", "Y"), ("d", "Z")], [("e", "Y"), ("f", "X")]]
    for shard, rows in enumerate(per_shard):
        with ShardWriter(tmp_path / "ingest" / "shards" / f"{shard:05d}.tar") as w:
            for key, _ in rows:
                w.write(key, {"jpg": b"x", "txt": "t"})
        tables.write_table(tmp_path / "score" / "parts" / f"{shard:05d}.scores.parquet",
                           pa.Table.from_pylist([{"key": k, "entity_id": e, "score": 0.8}
                                                 for k, e in rows]), tables.SCORES)
    cfg = BuildConfig(rules=("threshold",), threshold=0.5, min_images_per_entity=3)
    stats = build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e", cfg)
    labels = pq.read_table(tmp_path / "i2e" / "labels.parquet").to_pylist()
    assert [(r["key"], r["entity_ids"]) for r in labels] == [("a", ["Y"]), ("c", ["Y"]),
                                                             ("e", ["Y"])]
    assert {k: stats[k] for k in ("images", "entities", "labels", "pairs_scored",
                                  "labels_per_image", "min_images_per_entity",
                                  "max_images_per_entity")} == {
        "images": 3, "entities": 1, "labels": 3, "pairs_scored": 6, "labels_per_image": 1.0,
        "min_images_per_entity": 3, "max_images_per_entity": 3}


def test_rule_summary_gives_the_gate_its_score_floor():
    from mofi_core.curate.rules import rule_summary

    got = rule_summary(BuildConfig(rules=("threshold", "top_k"), threshold=0.4))
    assert got["score_floor"] == 0.4 and got["rules"] == ["threshold", "top_k"]  # json: lists
    assert rule_summary(BuildConfig(rules=("top_k",), threshold=0.4))["score_floor"] == -1.0
    assert got == {**BuildConfig(rules=("threshold", "top_k"), threshold=0.4).model_dump(
        mode="json"), "score_floor": 0.4}


def test_the_rules_refusals_word_for_word():
    with pytest.raises(ValueError) as err:
        select_labels(["a"], ["X"], [0.9], _cfg(rules=("fdr",)))
    assert str(err.value) == ("build.rules fdr must be resolved to a threshold first (build "
                              "does it from the decoy estimate, mofi_core.curate.fdr)")
    with pytest.raises(ValueError) as err:
        select_labels(["c"], ["X"], [0.9], _cfg(rules=("null_quantile",)), null_cut={})
    assert str(err.value) == ("build.rules has null_quantile but image 'c' has no null scores: "
                              "set score.null_samples > 0 and re-run score")


def test_streaming_build_applies_each_images_null_cutoff_and_drops_excluded_keys(tmp_path):
    """The path the stage runs (build, shard by shard) with rule null_quantile and decontam's
    near-copies: each image's cut-off comes from its own shard's null scores, and an excluded
    key never becomes a label even where its score passes every rule."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mofi_core.curate.build import build
    from mofi_core.io import tables
    from mofi_core.io.shards import ShardWriter

    # (key, entity, score, null scores): the 0.5 quantile of the nulls is the cut-off
    per_shard = [[("a", "X", 0.60, [0.1, 0.5, 0.7]),    # cut 0.5: kept
                  ("b", "X", 0.90, [0.1, 0.2, 0.3]),    # passes, but excluded
                  ("c", "Y", 0.40, [0.3, 0.45, 0.6])],  # cut 0.45: dropped
                 [("d", "X", 0.30, [0.1, 0.2, 0.25]),   # cut 0.2: kept
                  ("e", "Y", 0.80, [0.7, 0.8, 0.9])]]   # cut 0.8, equal: dropped
    for shard, rows in enumerate(per_shard):
        name = f"{shard:05d}"
        with ShardWriter(tmp_path / "ingest" / "shards" / f"{name}.tar") as w:
            for key, *_ in rows:
                w.write(key, {"jpg": b"x", "txt": "t"})
        parts = tmp_path / "score" / "parts"
        tables.write_table(parts / f"{name}.scores.parquet", pa.Table.from_pylist(
            [{"key": k, "entity_id": e, "score": s} for k, e, s, _ in rows]), tables.SCORES)
        tables.write_table(parts / f"{name}.null.parquet", pa.Table.from_pylist(
            [{"key": k, "scores": n} for k, _, _, n in rows]), tables.NULL_SCORES)
    cfg = BuildConfig(rules=("threshold", "null_quantile"), threshold=0.25, null_quantile=0.5,
                      min_images_per_entity=1)
    stats = build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e", cfg,
                  exclude=frozenset({"b"}))
    labels = pq.read_table(tmp_path / "i2e" / "labels.parquet").to_pylist()
    assert [(r["key"], r["entity_ids"]) for r in labels] == [("a", ["X"]), ("d", ["X"])]
    assert labels[0]["scores"] == pytest.approx([0.6]) and stats["images"] == 2
    assert stats["pairs_scored"] == 4  # the excluded key's pair is not counted as scored
    # without the exclusion, b is a label; without null_quantile, c and e are too
    build(tmp_path / "ingest", tmp_path / "score", tmp_path / "all", cfg)
    assert [r["key"] for r in pq.read_table(tmp_path / "all" / "labels.parquet").to_pylist()] \
        == ["a", "b", "d"]
    build(tmp_path / "ingest", tmp_path / "score", tmp_path / "plain",
          cfg.model_copy(update={"rules": ("threshold",)}), exclude=frozenset({"b"}))
    assert [r["key"] for r in pq.read_table(tmp_path / "plain" / "labels.parquet").to_pylist()] \
        == ["a", "c", "d", "e"]
