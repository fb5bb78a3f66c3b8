from functools import partial

import numpy as np
import pytest

from mofi_core.config.build import BuildConfig
from mofi_core.curate.rules import select_labels
from tests.errors import names

# the rules on CLIP scores alone: these tests have no ner output (no link scores)
ClipOnly = partial(BuildConfig, link_weight=0.0)


def test_threshold_then_min_images_then_empty_images_dropped():
    keys = ["a", "a", "b", "c", "d", "e"]
    ents = ["X", "Y", "X", "Y", "Z", "X"]
    scores = [0.9, 0.1, 0.5, 0.6, 0.95, 0.3]
    out = select_labels(keys, ents, scores, ClipOnly(threshold=0.3, min_images_per_entity=2))
    # X: a, b, e pass (3 images); Y: only c passes (1 < 2) -> dropped; Z: 1 image -> dropped
    assert out == {"a": [("X", 0.9)], "b": [("X", 0.5)], "e": [("X", 0.3)]}


def test_multi_label_images_keep_every_passing_entity_sorted():
    out = select_labels(["a", "a", "b", "b"], ["Y", "X", "X", "Y"], [0.5, 0.6, 0.7, 0.8],
                        ClipOnly(rules=("threshold",), threshold=0.0, min_images_per_entity=1))
    assert out == {"a": [("X", 0.6), ("Y", 0.5)], "b": [("X", 0.7), ("Y", 0.8)]}


def test_threshold_bounds_are_validated():
    with pytest.raises(ValueError):
        ClipOnly(threshold=1.5)


def _cfg(**kw):
    return ClipOnly(min_images_per_entity=1, **kw)


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


@pytest.mark.parametrize("link_weight", [0.0, 0.05])
def test_streaming_build_over_shards_equals_select_labels_on_everything(tmp_path, link_weight):
    """build works shard by shard; the vocabulary and the per-entity cap are global, so the
    result must equal the in-memory rule on the whole table (ties included), with and without
    ner's link scores in top_k's ranking."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mofi_core.curate.build import build
    from mofi_core.io import tables
    from mofi_core.io.shards import ShardWriter

    rng = random.Random(3)
    ents = [f"E{i}" for i in range(8)]
    all_rows, all_links = [], {}
    for shard in range(3):
        rows, mentions = [], []
        with ShardWriter(tmp_path / "ingest" / "shards" / f"{shard:05d}.tar") as w:
            for i in range(40):
                key = f"k{shard}-{i:02d}"
                w.write(key, {"jpg": b"x", "txt": "t"})
                for e in rng.sample(ents, rng.randint(1, 3)):
                    rows.append({"key": key, "entity_id": e,
                                 "score": rng.choice([0.2, 0.5, 0.5, 0.7, 0.9])})
                    link = rng.choice([0.1, 0.3, 0.6, 1.0])
                    # two mentions of one entity: its best link score counts
                    for start, sc in ((0, link), (10, link / 2)):
                        mentions.append({"key": key, "mention": "m", "start": start,
                                         "end": start + 1, "label": "KB", "source": "kb",
                                         "entity_id": e, "link_score": sc})
                    all_links[(key, e)] = float(np.float32(link))
                mentions.append({"key": key, "mention": "u", "start": 20, "end": 21,
                                 "label": "KB", "source": "kb", "entity_id": None,
                                 "link_score": 0.0})  # an unlinked mention counts for nothing
        tables.write_table(tmp_path / "score" / "parts" / f"{shard:05d}.scores.parquet",
                           pa.Table.from_pylist(rows), tables.SCORES)
        tables.write_table(tmp_path / "ner" / "parts" / f"{shard:05d}.parquet",
                           tables.from_rows(mentions, tables.MENTIONS), tables.MENTIONS)
        all_rows += rows
    cfg = BuildConfig(rules=("threshold", "top_k"), threshold=0.4, top_k=2,
                      min_images_per_entity=12, max_images_per_entity=15,
                      link_weight=link_weight)
    stats = build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e", cfg,
                  ner_dir=tmp_path / "ner")
    scores = pa.Table.from_pylist(all_rows, tables.SCORES)  # float32, as build reads them
    keys, ids = scores["key"].to_pylist(), scores["entity_id"].to_pylist()
    want = select_labels(keys, ids, scores["score"].to_pylist(), cfg,
                         links=[all_links[p] for p in zip(keys, ids, strict=True)])
    if link_weight:  # the link scores change which candidates top_k keeps
        assert want != select_labels(keys, ids, scores["score"].to_pylist(),
                                     cfg.model_copy(update={"link_weight": 0.0}))
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
    # top_k: a tie with the k-th is kept whole, never cut by the order of the ids
    out = select_labels(["a", "a", "a"], ["Z", "X", "Y"], [0.5, 0.5, 0.5],
                        _cfg(rules=("top_k",), top_k=2))
    assert out == {"a": [("X", 0.5), ("Y", 0.5), ("Z", 0.5)]}
    # the cap per entity: equal scores go to the smaller key
    out = select_labels(["c", "a", "b"], ["X", "X", "X"], [0.5, 0.5, 0.5],
                        _cfg(rules=("top_k",), max_images_per_entity=2))
    assert out == {"a": [("X", 0.5)], "b": [("X", 0.5)]}


def test_an_entity_with_exactly_min_images_is_kept_one_fewer_is_dropped():
    keys = ["a", "b", "c", "d", "e"]
    ents = ["X", "X", "Y", "Y", "Y"]
    out = select_labels(keys, ents, [0.9] * 5, ClipOnly(rules=("threshold",), threshold=0.0,
                                                           min_images_per_entity=3))
    assert out == {"c": [("Y", 0.9)], "d": [("Y", 0.9)], "e": [("Y", 0.9)]}
    out = select_labels(keys, ents, [0.9] * 5, ClipOnly(rules=("threshold",), threshold=0.0,
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
    cfg = ClipOnly(rules=("threshold",), threshold=0.5, min_images_per_entity=3)
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

    got = rule_summary(ClipOnly(rules=("threshold", "top_k"), threshold=0.4))
    assert got["score_floor"] == 0.4 and got["rules"] == ["threshold", "top_k"]  # json: lists
    assert rule_summary(ClipOnly(rules=("top_k",), threshold=0.4))["score_floor"] == -1.0
    assert got == {**ClipOnly(rules=("threshold", "top_k"), threshold=0.4).model_dump(
        mode="json"), "score_floor": 0.4}


def test_the_rules_refusals_name_the_rule_and_the_image():
    with pytest.raises(ValueError) as err:
        select_labels(["a"], ["X"], [0.9], _cfg(rules=("fdr",)))
    names(err.value, "build.rules fdr")
    with pytest.raises(ValueError) as err:
        select_labels(["c"], ["X"], [0.9], _cfg(rules=("null_quantile",)), null_cut={})
    names(err.value, "null_quantile", "'c'", "score.null_samples")


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
    cfg = ClipOnly(rules=("threshold", "null_quantile"), threshold=0.25, null_quantile=0.5,
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


# --------------------------------------- what build writes, exactly: shards, tables, statistics

# (key, entity, score) per ingest shard. k0's entity Z has one image (under min_images 2: out of
# the vocabulary) and comes first in its shard; k5's pair is under the threshold; k2 has no
# alt-text; k3's X score has a 7th decimal that the 6-decimal rounding must drop. No score lies
# on a histogram bin edge (every 0.01).
BUILD_SHARDS = {"00000": [("k0", "Z", 0.905), ("k1", "X", 0.805), ("k1", "Y", 0.705),
                          ("k2", "X", 0.655)],
                "00001": [("k3", "X", 0.6234567), ("k3", "Y", 0.955), ("k4", "Y", 0.555),
                          ("k5", "X", 0.305)]}


def _write_build_inputs(root):
    import pyarrow as pa

    from mofi_core.io import tables
    from mofi_core.io.shards import ShardWriter

    for name, rows in BUILD_SHARDS.items():
        with ShardWriter(root / "ingest" / "shards" / f"{name}.tar") as w:
            for key in dict.fromkeys(k for k, _, _ in rows):
                w.write(key, {"jpg": f"jpeg of {key}".encode()} if key == "k2" else
                        {"jpg": f"jpeg of {key}".encode(), "txt": f"alt-text of {key}"})
        tables.write_table(root / "score" / "parts" / f"{name}.scores.parquet",
                           pa.Table.from_pylist([{"key": k, "entity_id": e, "score": s}
                                                 for k, e, s in rows]), tables.SCORES)


def test_build_writes_whole_samples_labels_vocab_and_statistics(tmp_path, monkeypatch, capsys):
    import json

    import numpy as np
    import pyarrow.parquet as pq

    from mofi_core.curate import build as build_mod
    from mofi_core.io.shards import iter_samples

    _write_build_inputs(tmp_path)
    drawn = {}
    monkeypatch.setattr(build_mod, "_plots", lambda out, acc: drawn.update(acc=acc))
    cfg = ClipOnly(rules=("threshold",), threshold=0.5, min_images_per_entity=2)
    stats = build_mod.build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e", cfg)
    i2e = tmp_path / "i2e"
    want = {"k1": (["X", "Y"], [0.805, 0.705]), "k2": (["X"], [0.655]),
            "k3": (["X", "Y"], [0.623457, 0.955]), "k4": (["Y"], [0.555])}
    shard_of = {"k1": "00000.tar", "k2": "00000.tar", "k3": "00001.tar", "k4": "00001.tar"}
    assert sorted(p.name for p in (i2e / "shards").iterdir()) == ["00000.tar", "00001.tar"]
    samples = {s["__key__"]: s for name in ("00000", "00001")
               for s in iter_samples(i2e / "shards" / f"{name}.tar")}
    assert sorted(samples) == sorted(want)
    for key, (ents, scores) in want.items():
        s = samples[key]
        assert s["jpg"] == f"jpeg of {key}".encode()
        assert s["txt"] == (b"" if key == "k2" else f"alt-text of {key}".encode())
        assert json.loads(s["json"]) == {"entity_ids": ents, "scores": scores}
    rows = pq.read_table(i2e / "labels.parquet").to_pylist()
    assert rows == [{"key": k, "shard": shard_of[k], "entity_ids": e,  # float32 column
                     "scores": [float(np.float32(x)) for x in s]} for k, (e, s) in want.items()]
    assert json.loads((i2e / "vocab.json").read_text()) == {"classes": ["X", "Y"]}
    assert stats == {"images": 4, "entities": 2, "labels": 6, "pairs_scored": 8,
                     "labels_per_image": 1.5, "min_images_per_entity": 3,
                     "max_images_per_entity": 3}
    assert sorted(p.name for p in i2e.iterdir()) == ["label_free.json", "labels.parquet",
                                                      "shards", "stats.json", "vocab.json"]
    # the figures' histograms: every scored pair, and every kept label's written score
    acc = drawn["acc"]
    every = np.float32([s for rows in BUILD_SHARDS.values() for _, _, s in rows])
    np.testing.assert_array_equal(acc.hist_all, np.histogram(every, build_mod.HIST_BINS)[0])
    kept = [s for _, sc in want.values() for s in sc]
    np.testing.assert_array_equal(acc.hist_kept, np.histogram(kept, build_mod.HIST_BINS)[0])
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("build: ") and "score.null_samples" in first
    assert "build pass 1/2: shard 2/2 (100%) pairs 8 |" in out
    assert "build pass 2/2: shard 2/2 (100%) images 4 |" in out


def test_accumulator_adds_and_merges_shard_by_shard():
    import numpy as np

    from mofi_core.curate.build import HIST_BINS, _Accumulator

    zeros = np.zeros(len(HIST_BINS) - 1, dtype=np.int64)
    one = _Accumulator(zeros.copy())
    one.add([{"entity_ids": ["A", "B"], "scores": [0.505, 0.605]}])
    one.add([{"entity_ids": ["A", "B", "C"], "scores": [0.705, 0.705, 0.805]},
             {"entity_ids": ["C"], "scores": [0.105]}])
    assert (one.images, one.labels) == (3, 6)
    assert one.per_entity == {"A": 2, "B": 2, "C": 2}
    want = np.histogram([0.505, 0.605, 0.705, 0.705, 0.805, 0.105], HIST_BINS)[0]
    np.testing.assert_array_equal(one.hist_kept, want)
    both = _Accumulator(zeros.copy())
    both.merge(one.summary())
    both.merge(one.summary())
    assert (both.images, both.labels, both.per_entity) == (6, 12, {"A": 4, "B": 4, "C": 4})
    np.testing.assert_array_equal(both.hist_kept, 2 * want)


def test_a_labelled_key_missing_from_its_ingest_shard_is_refused_naming_it(tmp_path):
    from mofi_core.curate.build import _write_shard
    from mofi_core.io.shards import ShardWriter

    tar = tmp_path / "00000.tar"
    with ShardWriter(tar) as w:
        w.write("k1", {"jpg": b"x", "txt": "t"})
    labels = {"k1": [("X", 0.9)], "gone": [("X", 0.8)], "lost": [("Y", 0.7)]}
    with pytest.raises(ValueError) as err:
        _write_shard(tar, labels, tmp_path / "out.tar")
    names(err.value, "2 labelled keys", str(tar))
