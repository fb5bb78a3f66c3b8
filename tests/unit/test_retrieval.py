"""GPR1200-protocol retrieval metrics: hand-worked cases, and the vectorised pass against a plain
per-query loop that follows the official evaluation code path."""

import os

import numpy as np
import pytest

from mofi_core.evaluate import retrieval
from mofi_core.evaluate.retrieval import (
    GPR1200_DOMAINS,
    average_precisions,
    gpr1200_domains,
    gpr_files,
    precision_recall_curve,
    recall_at_k,
    retrieval_metrics,
    scan_rankings,
)
from tests.errors import names

# ---------------------------------------------------------------- naive references (tests only)


def _unit_rows(features):
    feats = np.asarray(features, dtype=np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def _as_given(features):
    """The official code multiplies the features it is handed: no normalisation, no cast."""
    return np.asarray(features)


def _official_order(feats, q):
    """One query's ranking as the official code makes it: ascending argsort, reversed."""
    return np.argsort(feats @ feats[q])[::-1]


def loop_aps(features, labels):
    """Per query: rank everything (itself included), walk the relevant positions."""
    feats = _as_given(features)
    out = []
    for q in range(len(feats)):
        is_rel = labels[_official_order(feats, q)] == labels[q]
        seen, total = 0, 0.0
        for i in np.where(is_rel)[0]:
            seen += 1
            total += seen / (i + 1.0)
        out.append(total / is_rel.sum())
    return np.array(out)


def loop_recall_hits(features, labels, k):
    feats = _as_given(features)
    hits = []
    for q in range(len(feats)):
        others = [j for j in _official_order(feats, q) if j != q][:k]
        hits.append(any(labels[j] == labels[q] for j in others))
    return np.array(hits)


def loop_interpolated_precision(features, labels, levels):
    feats = _as_given(features)
    rows = []
    for q in range(len(feats)):
        where = np.where(labels[_official_order(feats, q)] == labels[q])[0]
        precision = np.arange(1, len(where) + 1) / (where + 1.0)
        recall = np.arange(1, len(where) + 1) / len(where)
        rows.append([precision[recall >= level - 1e-9].max() for level in levels])
    return np.array(rows)


def tied_data(seed=0):
    """150 images in 10 classes of very uneven size (two singletons, one of 62), shuffled.
    Each row has four entries of +-1 among six, so every row has norm 2: after normalising the
    entries are 0 or +-0.5, every dot product is an exact multiple of 0.25 whatever the
    summation order, and the nine possible similarity values make ties everywhere."""
    rng = np.random.default_rng(seed)
    sizes = [1, 1, 2, 3, 5, 8, 13, 21, 34, 62]
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    feats = np.zeros((len(labels), 6))
    for row in feats:
        row[rng.choice(6, size=4, replace=False)] = rng.choice([-1.0, 1.0], size=4)
    return feats, labels


def angles(degrees):
    rad = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


# ------------------------------------------------------------------------- hand-worked cases


def test_perfect_separation():
    # two tight groups far apart: every query ranks its own class first -> AP 1, R@k 1, and
    # precision is 1 at every recall level
    feats = np.array([[1, 0], [1, 0.01], [1, -0.01], [0, 1], [0.01, 1]], dtype=float)
    labels = np.array([0, 0, 0, 1, 1])
    np.testing.assert_allclose(average_precisions(feats, labels), 1.0)
    assert recall_at_k(feats, labels, 1) == 1.0
    levels, precision = precision_recall_curve(feats, labels, levels=11)
    np.testing.assert_allclose(levels, np.linspace(0, 1, 11))
    np.testing.assert_allclose(precision, 1.0)


# uneven classes on a circle: A = {0, 1, 3}, B = {2, 4}; similarity falls with the angle
UNEVEN_ANGLES, UNEVEN_LABELS = [0, 10, 25, 45, 70], np.array([0, 0, 1, 0, 1])


def test_uneven_classes_by_hand():
    # query 0 (A, 3 relevant): angular gaps 0,10,25,45,70 -> ranking 0 1 2 3 4, relevant at
    #   ranks 1,2,4: (1/1 + 2/2 + 3/4) / 3 = 11/12
    # query 1 (A): gaps to 1,0,2,3,4 = 0,10,15,35,60 -> ranks 1,2,4 relevant: 11/12
    # query 2 (B, 2 relevant): gaps 2:0 1:15 3:20 0:25 4:45 -> relevant at ranks 1,5:
    #   (1 + 2/5) / 2 = 0.7
    # query 3 (A): gaps 3:0 2:20 4:25 1:35 0:45 -> relevant at ranks 1,4,5: (1 + 2/4 + 3/5)/3 = 0.7
    # query 4 (B): gaps 4:0 3:25 2:45 1:60 0:70 -> relevant at ranks 1,3: (1 + 2/3) / 2 = 5/6
    expected = [11 / 12, 11 / 12, 0.7, 0.7, 5 / 6]
    feats = angles(UNEVEN_ANGLES)
    np.testing.assert_allclose(average_precisions(feats, UNEVEN_LABELS), expected)
    metrics = retrieval_metrics(feats, UNEVEN_LABELS)
    assert metrics["gpr_map"] == pytest.approx(np.mean(expected))


def test_recall_excludes_the_query_itself():
    # every query is its own nearest neighbour (similarity 1) but does not count for R@k.
    # nearest *other* image: 0->1 (A, hit), 1->0 (hit), 2->1 (A, miss for B), 3->2 (miss),
    # 4->3 (miss) -> R@1 = 2/5; two nearest others of 4 are 3, 2 -> hit, of 2: 1, 3 and of 3:
    # 2, 4 -> still misses -> R@2 = 3/5; with all four others every query has a hit -> R@5 = 1
    feats = angles(UNEVEN_ANGLES)
    assert recall_at_k(feats, UNEVEN_LABELS, 1) == pytest.approx(2 / 5)
    assert recall_at_k(feats, UNEVEN_LABELS, 2) == pytest.approx(3 / 5)
    metrics = retrieval_metrics(feats, UNEVEN_LABELS)
    assert (metrics["recall_at_1"], metrics["recall_at_5"]) == pytest.approx((2 / 5, 1.0))


def test_singleton_class_finds_itself_first():
    # image 2 is alone in its class: the only relevant item of its ranking is itself, at rank 1
    # (similarity 1, nothing ties it), so AP = 1/1 = 1; with itself excluded it has no
    # same-class neighbour, so it is an R@k miss for every k
    feats = angles([0, 5, 90])
    labels = np.array([0, 0, 1])
    assert average_precisions(feats, labels)[2] == pytest.approx(1.0)
    hits = scan_rankings(feats, labels, ks=(1, 2)).recall_hits
    assert hits[1].tolist() == [True, True, False] and hits[2].tolist() == [True, True, False]


def test_pr_curve_by_hand():
    # query 0 of the uneven case: relevant at ranks 1, 2, 4 -> precision 1, 1, 3/4 at recall
    # 1/3, 2/3, 1. Interpolated at levels 0, 1/3, 2/3, 1: 1, 1, 1, 3/4
    # query 2: relevant at ranks 1, 5 -> precision 1, 2/5 at recall 1/2, 1 -> 1, 1, 2/5, 2/5
    scan = scan_rankings(angles(UNEVEN_ANGLES), UNEVEN_LABELS, ks=(), pr_levels=4)
    np.testing.assert_allclose(scan.interpolated_precision[0], [1, 1, 1, 0.75])
    np.testing.assert_allclose(scan.interpolated_precision[2], [1, 1, 0.4, 0.4])


# ------------------------------------------------------------------------------------- ties


def test_tie_three_images_higher_index_first():
    # f1 and f2 mirror each other about f0, so query 0 sees them at exactly equal similarity:
    # row [1, a, a]. For an array this small numpy's default sort keeps equal values in index
    # order, so argsort-then-reverse ranks 0, 2, 1: the irrelevant image 2 (higher index) before
    # the relevant image 1 -> AP(query 0) = (1/1 + 2/3) / 2 = 5/6. A stable sort of the negated
    # similarities (the lower index first) would give 0, 1, 2 and AP 1.
    feats = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = np.array([0, 0, 1])
    unit = _unit_rows(feats)
    row = unit[0] @ unit.T
    assert row[1] == row[2]
    assert np.argsort(row)[::-1].tolist() == [0, 2, 1], "numpy's default sort reordered a tie"
    assert np.argsort(-row, kind="stable").tolist() == [0, 1, 2]
    assert average_precisions(feats, labels)[0] == pytest.approx(5 / 6)


def test_tie_four_images_follows_numpy_default_sort():
    # query 0's row is [1, 1, a, a]: image 1 duplicates the query (other class), images 2
    # (relevant) and 3 (irrelevant) tie at a. From four items on, numpy's SIMD sorts (AVX-512
    # builds) order ties by content, not by index -- on the numpy 2.4 / AVX-512 machine this
    # was written on the official order is 0 1 2 3, lower index first, unlike the 3-image case.
    # AP by hand for each place the relevant images 0 and 2 can take:
    #   ranks (1, 3): (1/1 + 2/3)/2 = 5/6     ranks (1, 4): (1/1 + 2/4)/2 = 3/4
    #   ranks (2, 3): (1/2 + 2/3)/2 = 7/12    ranks (2, 4): (1/2 + 2/4)/2 = 1/2
    by_ranks = {(1, 3): 5 / 6, (1, 4): 3 / 4, (2, 3): 7 / 12, (2, 4): 1 / 2}
    feats = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = np.array([0, 1, 0, 1])
    official = np.argsort(_unit_rows(feats)[0] @ _unit_rows(feats).T)[::-1].tolist()
    ranks = (official.index(0) + 1, official.index(2) + 1)
    assert average_precisions(feats, labels)[0] == pytest.approx(by_ranks[ranks])


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 150, 1000])
def test_vectorised_equals_loop_with_ties_and_uneven_classes(chunk):
    feats, labels = tied_data()
    np.testing.assert_allclose(average_precisions(feats, labels, chunk=chunk),
                               loop_aps(feats, labels), rtol=0, atol=1e-6)


def test_tied_data_has_ties_between_relevant_and_irrelevant_images():
    feats, labels = tied_data()
    unit = _unit_rows(feats)
    sims = unit @ unit.T
    same = labels[:, None] == labels[None, :]
    mixed = [q for q in range(len(labels))
             if set(sims[q][same[q]]) & set(sims[q][~same[q]])]
    assert len(mixed) > 100  # so the equality above really exercises the tie order


def test_ties_follow_the_official_sort_not_a_stable_one():
    feats, labels = tied_data(seed=1)
    unit = _unit_rows(feats)
    sims = unit @ unit.T
    if all(np.array_equal(np.argsort(r), np.argsort(r, kind="stable")) for r in sims):
        pytest.skip("numpy's default sort is stable on this machine for these rows")
    stable = np.argsort(sims, axis=1, kind="stable")[:, ::-1]
    is_rel = labels[stable] == labels[:, None]
    hits = np.cumsum(is_rel, axis=1)
    stable_aps = (is_rel * hits / np.arange(1, len(labels) + 1)).sum(1) / is_rel.sum(1)
    ours = average_precisions(feats, labels)
    np.testing.assert_allclose(ours, loop_aps(feats, labels), atol=1e-6)
    assert np.abs(ours - stable_aps).max() > 1e-3


def test_vectorised_equals_loop_on_real_valued_data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), rng.integers(2, 9, size=20))
    feats = rng.normal(size=(len(labels), 16)) + labels[:, None] * 0.3
    np.testing.assert_allclose(average_precisions(feats, labels, chunk=7),
                               loop_aps(feats, labels), atol=1e-6)


def test_block_size_does_not_change_the_similarities():
    # numpy sends a one-row product to gemv, which rounds differently from the block products.
    # Whether block rows carry the very bits of the full product depends on the BLAS kernel
    # the CPU gets (equal with OpenBLAS's SkylakeX kernels, a few ulp apart on an AMD EPYC):
    # the portable promise is a few ulp, and the same APs.
    rng = np.random.default_rng(2)
    feats = retrieval.l2_normalise(rng.normal(size=(300, 64)).astype(np.float32))
    full = feats @ feats.T
    for rows in (slice(5, 6), slice(0, 2), slice(10, 37), slice(299, 300)):
        np.testing.assert_allclose(retrieval._block_similarities(feats[rows], feats),
                                   full[rows], rtol=0, atol=4 * np.finfo(np.float32).eps)
    one_row = (feats[5:6] @ feats.T)[0]  # the unpadded gemv path, for contrast: still close
    np.testing.assert_allclose(one_row, full[5], rtol=0, atol=4 * np.finfo(np.float32).eps)
    labels = np.repeat(np.arange(30), 10)
    assert np.array_equal(average_precisions(feats, labels, chunk=1),
                          average_precisions(feats, labels))


@pytest.mark.parametrize("chunk", [1, 13, None])
def test_recall_and_pr_equal_loops(chunk):
    feats, labels = tied_data(seed=3)
    scan = scan_rankings(feats, labels, ks=(1, 5), pr_levels=21, chunk=chunk)
    for k in (1, 5):
        assert np.array_equal(scan.recall_hits[k], loop_recall_hits(feats, labels, k))
    np.testing.assert_allclose(scan.interpolated_precision,
                               loop_interpolated_precision(feats, labels, scan.recall_levels),
                               atol=1e-12)


def test_pr_curve_is_monotone():
    feats, labels = tied_data(seed=4)
    levels, precision = precision_recall_curve(feats, labels)
    assert levels[0] == 0 and levels[-1] == 1 and len(levels) == 21
    assert np.all(np.diff(precision) <= 1e-12) and 0 < precision[-1] <= precision[0] <= 1


# ------------------------------------------------------------------------------- domains


def test_gpr1200_domains_match_block_means(monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(1200), 10)
    block = np.arange(12_000) // 2000
    centres = rng.normal(size=(1200, 8))
    # noise grows by domain so that the six domain mAPs differ
    feats = retrieval.l2_normalise(
        centres[labels] + rng.normal(size=(12_000, 8)) * (0.3 + 0.2 * block)[:, None])
    scans = []

    def recording_scan(*args, **kwargs):
        scans.append(scan_rankings(*args, **kwargs))
        return scans[-1]

    monkeypatch.setattr(retrieval, "scan_rankings", recording_scan)
    metrics = retrieval_metrics(feats, labels)
    aps = scans[0].aps
    for i, name in enumerate(GPR1200_DOMAINS):
        assert metrics[f"gpr_map_{name}"] == pytest.approx(aps[2000 * i:2000 * (i + 1)].mean())
    domain_maps = [metrics[f"gpr_map_{name}"] for name in GPR1200_DOMAINS]
    assert np.all(np.diff(domain_maps) < 0)
    assert metrics["gpr_map"] == pytest.approx(np.mean(domain_maps))


def test_domains_come_from_the_categories_not_the_row_order():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(1200), 10)
    centres = rng.normal(size=(1200, 8))
    feats = retrieval.l2_normalise(centres[labels] + rng.normal(size=(12_000, 8))
                                   * (0.3 + 0.1 * (labels // 200))[:, None])
    canonical = retrieval_metrics(feats, labels)
    shuffle = rng.permutation(12_000)
    shuffled = retrieval_metrics(feats[shuffle], labels[shuffle])
    assert set(shuffled) == set(canonical)
    for name in GPR1200_DOMAINS:  # each query keeps its AP: only near-ties could move
        assert shuffled[f"gpr_map_{name}"] == pytest.approx(canonical[f"gpr_map_{name}"],
                                                             abs=1e-9)
    masks = gpr1200_domains(labels[shuffle])
    assert list(masks) == list(GPR1200_DOMAINS)  # the official order
    assert all(m.sum() == 2000 for m in masks.values())
    assert np.array_equal(masks["sketch"], (labels[shuffle] >= 400) & (labels[shuffle] < 600))


def test_other_category_sets_have_no_domains():
    gpr = np.repeat(np.arange(1200), 10)
    assert gpr1200_domains(gpr[:-10]) is None  # 1,199 categories
    assert gpr1200_domains(gpr + 1) is None  # 1..1200: not the benchmark's ids
    assert gpr1200_domains(np.repeat(np.arange(1000), 12)) is None  # 12,000 images, 1,000 ids
    assert gpr1200_domains(gpr.astype(str)) is None
    assert set(gpr1200_domains(np.arange(1200))) == set(GPR1200_DOMAINS)  # one image each
    metrics = retrieval_metrics(angles(UNEVEN_ANGLES), UNEVEN_LABELS)
    assert not any(key.startswith(f"gpr_map_{d}") for d in GPR1200_DOMAINS for key in metrics)


def test_partitions():
    feats = angles(UNEVEN_ANGLES)
    parts = {"seen": np.array([1, 1, 1, 0, 0], bool), "empty": np.zeros(5, bool)}
    metrics = retrieval_metrics(feats, UNEVEN_LABELS, parts)
    assert metrics["gpr_map_seen"] == pytest.approx((11 / 12 + 11 / 12 + 0.7) / 3)
    assert "gpr_map_empty" not in metrics
    with pytest.raises(ValueError, match="boolean mask"):
        retrieval_metrics(feats, UNEVEN_LABELS, {"bad": np.array([0, 1, 2, 3, 4])})


# ------------------------------------------------------------------------------ input checks


def test_features_are_ranked_as_given_not_normalised():
    # by dot product the long irrelevant vector b outranks a's classmate c; by cosine it would
    # not: the official code multiplies what it is handed, and so does this module
    feats = np.array([[1.0, 0.0], [3.0, 3.0], [1.0, 0.1]])
    labels = np.array([0, 1, 0])
    # a itself and c both score 1 < 3: the two relevant images sit at ranks 2 and 3
    assert average_precisions(feats, labels)[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert average_precisions(retrieval.l2_normalise(feats), labels)[0] == 1.0
    np.testing.assert_array_equal(average_precisions(feats, labels), loop_aps(feats, labels))


def test_float64_features_are_not_cast_to_float32():
    # r beats i by 1e-12 in float64; cast to float32 the two would tie, and the official sort
    # would put i (the higher index) first
    feats = np.array([[1.0, 0.0], [0.5 + 1e-12, 0.0], [0.5, 0.0]])
    labels = np.array([0, 0, 1])
    assert average_precisions(feats, labels)[0] == 1.0
    as_float32 = average_precisions(feats.astype(np.float32), labels)[0]
    assert as_float32 == pytest.approx((1 + 2 / 3) / 2)
    assert retrieval._prepare(feats, labels)[0] is feats  # the caller's array itself


def test_a_zero_embedding_ranks_like_the_official_code():
    feats = np.array([[0.0, 0.0], [1.0, 0.0], [0.9, 0.1]])
    labels = np.array([0, 1, 1])
    np.testing.assert_array_equal(average_precisions(feats, labels), loop_aps(feats, labels))


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="NaN or infinite"):
        average_precisions(np.array([[1.0, np.nan], [1.0, 0.0]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="one label per embedding"):
        average_precisions(np.eye(3), np.array([0, 1]))
    with pytest.raises(ValueError, match="chunk"):
        average_precisions(np.eye(3), np.array([0, 1, 1]), chunk=0)
    with pytest.raises(ValueError, match="floating point"):
        average_precisions(np.eye(3, dtype=int), np.array([0, 1, 1]))


def test_default_chunk_respects_the_budget():
    rows = retrieval.default_chunk(12_000)
    assert rows * 12_000 * 24 <= retrieval.CHUNK_BUDGET_BYTES < (rows + 1) * 12_000 * 24
    assert retrieval.default_chunk(10) == 10 and retrieval.default_chunk(10**9) == 1


def test_gpr_layout_is_read_in_category_order(tmp_path):
    for name in ["10_b.jpg", "2_a.jpg", "2_c.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    files, cats = gpr_files(tmp_path)
    # the official loader's order: the listing, stably sorted by category
    listing = [n for n in os.listdir(tmp_path) if n.endswith(".jpg")]
    assert [f.name for f in files] == sorted(listing, key=lambda n: int(n.split("_")[0]))
    assert {f.name for f in files[:2]} == {"2_a.jpg", "2_c.jpg"} and files[2].name == "10_b.jpg"
    assert cats.tolist() == [2, 2, 10]
    (tmp_path / "x_bad.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"x_bad\.jpg: GPR1200 file names start with an integer"):
        gpr_files(tmp_path)
    (tmp_path / "x_bad.jpg").unlink()
    (tmp_path / "7.jpg").write_bytes(b"")  # no '_'
    with pytest.raises(ValueError, match=r"7\.jpg: GPR1200 file names"):
        gpr_files(tmp_path)


def test_gpr_download_folder_with_images_inside(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "README.md").write_text("GPR1200")
    for name in ["1_x.jpg", "0_y.jpg"]:
        (tmp_path / "images" / name).write_bytes(b"")
    files, cats = gpr_files(tmp_path)
    assert [f.parent.name for f in files] == ["images", "images"] and cats.tolist() == [0, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images in .*empty"):
        gpr_files(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing is not a folder"):
        gpr_files(tmp_path / "missing")


@pytest.mark.parametrize("data", ["tied", "real"])
def test_counting_positions_equal_the_official_sort_bit_for_bit(data, monkeypatch):
    """Rows ranked by counting (no sort) give exactly what sorting every row gives; rows where
    an irrelevant image ties a relevant one go to the official sort."""
    if data == "tied":
        feats, labels = tied_data()
    else:
        rng = np.random.default_rng(3)
        labels = np.repeat(np.arange(40), rng.integers(1, 12, size=40))
        feats = rng.normal(size=(len(labels), 24)) + labels[:, None] * 0.2
    monkeypatch.setattr(retrieval, "COUNT_MAX_CLASS", 10**6)  # count whatever the class size
    fast = scan_rankings(feats, labels, ks=(1, 5), pr_levels=11, chunk=37)
    calls = []
    real = retrieval._counted_positions

    def count_then_sort_all(sims, codes, rows, members, ks):
        _, tied = real(sims, codes, rows, members, ks)
        calls.append(len(tied))
        empty = (rows[:0], rows[:0], rows[:0], rows[:0], {k: np.zeros(0, bool) for k in ks})
        return empty, np.arange(len(rows))  # every row through the official sort

    monkeypatch.setattr(retrieval, "_counted_positions", count_then_sort_all)
    official = scan_rankings(feats, labels, ks=(1, 5), pr_levels=11, chunk=37)
    # the tied data really takes the fallback; real-valued data mostly not (float32 sims of
    # random vectors do tie now and then)
    assert sum(calls) > 100 if data == "tied" else sum(calls) < 0.05 * len(labels)
    assert np.array_equal(fast.aps, official.aps)
    for k in (1, 5):
        assert np.array_equal(fast.recall_hits[k], official.recall_hits[k])
    assert np.array_equal(fast.interpolated_precision, official.interpolated_precision)


def test_the_wrappers_pass_chunk_and_ask_only_for_what_they_read(monkeypatch):
    """recall_at_k and the PR curve hand the caller's chunk (the memory bound) to the scan and
    ask it for their own k only / no recall counters at all."""
    seen = []
    real = retrieval.scan_rankings

    def spy(*args, **kwargs):
        seen.append({k: v for k, v in kwargs.items() if k in ("ks", "chunk", "pr_levels")})
        return real(*args, **kwargs)

    monkeypatch.setattr(retrieval, "scan_rankings", spy)
    feats = np.eye(4)[[0, 0, 1, 1, 2, 2]] + 0.01 * np.arange(6)[:, None]
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert retrieval.recall_at_k(feats, labels, 3, chunk=2) == 1.0
    retrieval.precision_recall_curve(feats, labels, levels=5, chunk=4)
    retrieval.average_precisions(feats, labels, chunk=2)
    retrieval.retrieval_metrics(feats, labels, chunk=3)
    assert seen == [{"ks": (3,), "chunk": 2}, {"ks": (), "pr_levels": 5, "chunk": 4},
                    {"ks": (), "chunk": 2}, {"ks": (1, 5), "chunk": 3}]


def test_l2_normalise_refuses_what_cosine_cannot_rank():
    with pytest.raises(ValueError) as err:
        retrieval.l2_normalise(np.array([[1.0, 0.0], [np.inf, 1.0]]))
    names(err.value, "NaN or infinite")
    with pytest.raises(ValueError) as err:
        retrieval.l2_normalise(np.array([[1.0, 0.0], [0.0, 0.0]]))
    names(err.value, "all zeros")
    np.testing.assert_allclose(retrieval.l2_normalise(np.array([[3.0, 4.0]])), [[0.6, 0.8]])


# ------------------------------------------------- edges and refusals, exactly as users see them


def _refusal(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        call(*args, **kwargs)
    return str(err.value)


def test_scan_arguments_are_checked_at_their_bounds():
    feats, labels = np.eye(3), np.array([0, 1, 1])
    names(_refusal(scan_rankings, feats, labels, ks=(1.5,)), "ks", "(1.5,)")
    names(_refusal(scan_rankings, feats, labels, ks=(2, 0)), "ks", "(2, 0)")
    names(_refusal(scan_rankings, feats, labels, pr_levels=1), "pr_levels", ">= 2", "got 1")
    names(_refusal(precision_recall_curve, feats, labels, levels=1), "pr_levels", "got 1")
    levels, precision = precision_recall_curve(feats, labels, levels=2)  # the bound itself
    assert levels.tolist() == [0.0, 1.0] and precision.tolist() == [1.0, 1.0]
    names(_refusal(scan_rankings, feats, labels, chunk=0), "chunk", "got 0")


def test_features_are_refused_by_shape_and_one_image_is_enough():
    names(_refusal(average_precisions, np.ones(3), np.array([0, 1, 2])), "features", "(3,)")
    names(_refusal(average_precisions, np.ones((0, 4)), np.array([])), "features", "(0, 4)")
    names(_refusal(average_precisions, np.array([[np.nan, 1.0]]), np.array([0])), "NaN")
    one = scan_rankings(np.array([[0.6, 0.8]]), np.array([7]), ks=(1,))
    assert one.aps.tolist() == [1.0] and one.recall_hits[1].tolist() == [False]


def test_recall_hits_are_booleans_as_documented():
    scan = scan_rankings(angles(UNEVEN_ANGLES), UNEVEN_LABELS, ks=(1, 2))
    assert all(h.dtype == bool for h in scan.recall_hits.values())
    assert scan.recall_hits[1].tolist() == loop_recall_hits(angles(UNEVEN_ANGLES),
                                                            UNEVEN_LABELS, 1).tolist()


def test_recall_skips_the_query_where_it_ranks_itself_behind_others():
    # unnormalised rows: for a (x=1) the ranking is c (x=3, other class), b (x=2, a's class),
    # a itself; among the images other than a, b is second, so a has no hit at k=1 but one at
    # k=2 -- a query counted as ranked first would put b at the top instead
    feats = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    labels = np.array([0, 0, 1])
    for k in (1, 2):
        hits = scan_rankings(feats, labels, ks=(k,)).recall_hits[k]
        assert hits.tolist() == loop_recall_hits(feats, labels, k).tolist()
    assert scan_rankings(feats, labels, ks=(1,)).recall_hits[1][0] == False  # noqa: E712
    assert scan_rankings(feats, labels, ks=(2,)).recall_hits[2][0] == True  # noqa: E712


def test_class_members_are_ascending_indices_padded_with_minus_one():
    # 2,000 images: numpy's default (unstable) sort would shuffle indices within a class
    codes = np.random.default_rng(0).integers(0, 50, size=2000).astype(np.int32)
    members = retrieval._class_members(codes)
    width = np.bincount(codes).max()
    assert members.shape == (50, width) and members.dtype == np.int64
    for c in range(50):
        expected = np.flatnonzero(codes == c)
        assert members[c, :len(expected)].tolist() == expected.tolist()
        assert (members[c, len(expected):] == -1).all()


def test_counted_positions_leave_no_row_of_a_tie_free_block_to_the_sort():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(6), 4)
    feats = rng.normal(size=(len(labels), 8))
    _, codes, _ = retrieval._prepare(feats, labels)
    members = retrieval._class_members(codes)
    rows = np.arange(len(labels))
    sims = feats @ feats.T
    (fast_rows, row, pos, hit_no, recall), tied = retrieval._counted_positions(
        sims, codes, rows, members, (1,))
    assert tied.tolist() == [] and fast_rows.tolist() == rows.tolist()
    for q in rows:  # each relevant image's position in the official ranking
        order = np.argsort(sims[q])[::-1]
        assert sorted(pos[row == q].tolist()) == np.flatnonzero(codes[order] == codes[q]).tolist()
        assert sorted(hit_no[row == q].tolist()) == [0, 1, 2, 3]  # four images a class
    assert recall[1].tolist() == loop_recall_hits(feats, labels, 1).tolist()


@pytest.mark.parametrize("width, counted", [(retrieval.COUNT_MAX_CLASS, True),
                                            (retrieval.COUNT_MAX_CLASS + 1, False)])
def test_classes_up_to_count_max_class_are_counted_wider_ones_sorted(width, counted,
                                                                      monkeypatch):
    calls = []
    real = retrieval._counted_positions

    def spy(*args):
        calls.append(len(args[2]))
        return real(*args)

    monkeypatch.setattr(retrieval, "_counted_positions", spy)
    labels = np.r_[np.zeros(width, int), np.arange(1, 5)]
    feats = np.random.default_rng(1).normal(size=(len(labels), 4))
    aps = average_precisions(feats, labels)
    assert bool(calls) == counted
    np.testing.assert_array_equal(aps, loop_aps(feats, labels))


def test_the_chunk_budget_counts_the_pr_grid_only_when_the_curve_is_asked_for(monkeypatch):
    seen = []
    real = retrieval.default_chunk

    def spy(*args, **kwargs):
        seen.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(retrieval, "default_chunk", spy)
    labels = np.array([0, 0, 0, 1, 1, 2])
    feats = np.random.default_rng(2).normal(size=(6, 3))
    scan_rankings(feats, labels, ks=(1,))
    scan_rankings(feats, labels, ks=(), pr_levels=3)
    assert seen == [((6, 0), {}), ((6, 3), {})]  # widest class: 3 images


def test_default_chunk_exactly():
    assert retrieval.default_chunk(1) == 1
    # 10 images, widest class 10: 24 * 10 + 16 * 10 = 400 bytes per row
    assert retrieval.default_chunk(10, 10, budget_bytes=1200) == 3
    assert retrieval.default_chunk(10, 10, budget_bytes=1199) == 2
    assert retrieval.default_chunk(10, budget_bytes=720) == 3  # 240 bytes a row without the grid
    assert retrieval.default_chunk(10, budget_bytes=10) == 1  # never under one row


def test_partitions_named_like_a_gpr1200_domain_are_refused():
    labels = np.arange(1200)  # the benchmark's categories, one image each
    feats = np.random.default_rng(4).normal(size=(1200, 3))
    parts = {"faces": np.ones(1200, bool), "seen": np.ones(1200, bool)}
    names(_refusal(retrieval_metrics, feats, labels, parts), "['faces']", "GPR1200 domain")
    assert "gpr_map_seen" in retrieval_metrics(feats, labels, {"seen": parts["seen"]})


def test_gpr_domains_need_one_dimensional_integer_categories():
    gpr = np.repeat(np.arange(1200), 10)
    assert gpr1200_domains(gpr.reshape(1200, 10)) is None
    assert gpr1200_domains(gpr.astype(float)) is None
    assert gpr1200_domains(gpr)["faces"].sum() == 2000


def test_gpr_folder_reads_every_image_extension_in_any_case(tmp_path):
    for name in ["1_a.JPEG", "2_b.png", "3_c.PNG", "4_d.jpeg", "5_e.Jpg", "6_f.gif", "7_g_h.jpg"]:
        (tmp_path / name).write_bytes(b"")
    files, cats = gpr_files(tmp_path)
    assert sorted(f.name for f in files) == ["1_a.JPEG", "2_b.png", "3_c.PNG", "4_d.jpeg",
                                             "5_e.Jpg", "7_g_h.jpg"]
    assert cats.tolist() == [1, 2, 3, 4, 5, 7]  # the category is what precedes the first '_'


def test_gpr_folder_refusals_name_the_folder_or_the_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        gpr_files(tmp_path)
    names(err.value, str(tmp_path), "{category}_{name}.jpg")
    (tmp_path / "a_1.jpg").write_bytes(b"")
    names(_refusal(gpr_files, tmp_path), f"{tmp_path / 'a_1.jpg'}:", "integer category")
