"""Decontamination: planted near-copies of evaluation images are found, distinct renders are not.

The world is the demo's: entities from ``make_entities``, images from ``render`` as
``_benchmark_image`` draws them, at the demo's 64 px and at 128 px. ``DEFAULT_MAX_DISTANCE``
and the verification thresholds (``DEFAULT_MIN_CORRELATION``,
``DEFAULT_OFFSET_MIN_CORRELATION``) were chosen on seed 0; these tests run on seed 1, which
did not choose them. The bounds below are what seed 1 measured (misses out of 120 copies,
false positives out of 160 distinct renders).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import imagehash
import numpy as np
import pytest
from PIL import Image

from mofi_core.config.decontam import DecontamConfig
from mofi_core.curate.decontam import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_CORRELATION,
    DEFAULT_OFFSET_MAX_DISTANCE,
    DEFAULT_OFFSET_MIN_CORRELATION,
    DEFAULT_OFFSET_SCALES,
    DEFAULT_OFFSET_STEPS,
    EvalIndex,
    Match,
    build_index,
    candidate_pairs,
    correlations,
    find_copies,
    hamming,
    hash_bytes,
    hash_image,
    near_duplicates,
    thumbnail,
)
from mofi_core.demo.contaminate import KINDS, near_copy
from mofi_core.demo.entities import make_entities
from mofi_core.demo.render import draw_object, render

SEED = 1  # held out: DEFAULT_MAX_DISTANCE was chosen on seed 0
N_ENTITIES, N_EVAL, N_DISTINCT = 40, 3, 4
# measured on seed 1: planted copies missed (of 120) per size and kind; distinct renders caught
# (64 px: a q30-60 re-encode at 8 bits, brightened copies at 8 and 10; 128 px: another
# entity's render at 6 bits). Seed 0 measured the same sizes of tail: 0+0+0 / 0, 0+1+1 / 1.
MAX_MISSED = {64: {"resize": 0, "reencode": 1, "colour": 2},
              128: {"resize": 0, "reencode": 0, "colour": 0}}
MAX_FALSE_POSITIVES = {64: 0, 128: 1}


# the two-stage match (offset grid + verification), same seed: copies missed (of 120) per
# size and kind, distinct renders caught (of 160; at 128 px one render of an entity scores
# 0.77 against another render of it, an offset-grid pair). Seed 0 measured 0/0/0/0 and 0 at
# 64 px, 0/1/1/1 and 0 at 128 px.
MAX_MISSED_VERIFIED = {64: {"resize": 0, "reencode": 1, "crop": 1, "colour": 0},
                       128: {"resize": 0, "reencode": 0, "crop": 1, "colour": 0}}
MAX_FALSE_POSITIVES_VERIFIED = {64: 0, 128: 1}


@dataclass
class World:
    size: int
    evals: list[tuple[str, int, bytes]]  # (name, entity, jpeg): the evaluation set
    distinct: list[tuple[str, int, bytes]]  # other renders of the same entities: clean corpus
    index: EvalIndex  # whole images and centre crops: pHash alone, as before
    full: EvalIndex  # plus the offset grid, with what verification needs


@functools.cache
def _world(seed: int, size: int) -> World:
    entities = make_entities(N_ENTITIES, np.random.default_rng(seed))
    evals, distinct = [], []
    for i, e in enumerate(entities):
        obj = [(e, draw_object(e))]  # what _benchmark_image renders
        rng = np.random.default_rng([seed, size, i])
        evals += [(f"{i}_{j}.jpg", i, render(obj, size, rng)) for j in range(N_EVAL)]
        distinct += [(f"d{i}_{j}", i, render(obj, size, rng)) for j in range(N_DISTINCT)]
    return World(size, evals, distinct, build_index((n, b) for n, _, b in evals),
                 build_index(((n, b) for n, _, b in evals), offset_scales=DEFAULT_OFFSET_SCALES,
                             offset_steps=DEFAULT_OFFSET_STEPS))


@pytest.fixture(scope="module", params=[64, 128], ids=lambda s: f"{s}px")
def world(request) -> World:
    return _world(SEED, request.param)


def _scan(world: World, planted: list[tuple[str, str, bytes]], index: EvalIndex | None = None,
          ) -> tuple[dict[str, Match], int]:
    """Run near_duplicates over distinct renders + planted (key, source, jpeg) copies: the
    matches by key and the number of distinct renders caught."""
    corpus = [(k, b) for k, _, b in world.distinct] + [(k, b) for k, _, b in planted]
    keys = [k for k, _ in corpus]
    hashes = np.array([hash_bytes(b) for _, b in corpus], dtype=np.uint64)
    found = {m.key: m for m in near_duplicates(keys, hashes, index or world.index,
                                               DEFAULT_MAX_DISTANCE)}
    return found, sum(k in found for k, _, _ in world.distinct)


def _hashes_and_thumbs(corpus: list[tuple[str, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    hashes, thumbs = [], []
    for _, data in corpus:
        with Image.open(io.BytesIO(data)) as img:
            hashes.append(hash_image(img))
            thumbs.append(thumbnail(img))
    return np.array(hashes, dtype=np.uint64), np.stack(thumbs)


def _find(world: World, planted: list[tuple[str, str, bytes]], **kwargs
          ) -> tuple[dict[str, Match], int]:
    """find_copies (both stages, default thresholds) over distinct renders + planted copies:
    the matches by key and the number of distinct renders caught."""
    corpus = [(k, b) for k, _, b in world.distinct] + [(k, b) for k, _, b in planted]
    hashes, thumbs = _hashes_and_thumbs(corpus)
    found = {m.key: m for m in find_copies([k for k, _ in corpus], hashes, thumbs, world.full,
                                           **kwargs)}
    return found, sum(k in found for k, _, _ in world.distinct)


def _centre_crop_copy(data: bytes, scale: float) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    cw, ch = round(w * scale), round(h * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    buf = io.BytesIO()
    img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC).save(
        buf, format="JPEG", quality=80)
    return buf.getvalue()


# -- planted near-copies on the demo world -----------------------------------------------------

@pytest.mark.parametrize("verified", [False, True], ids=["phash alone", "verified"])
@pytest.mark.parametrize("kind", ["resize", "reencode", "colour"])
def test_planted_near_copies_are_caught_and_distinct_renders_are_not(world, kind, verified):
    """pHash alone and the two-stage match (candidates verified on pixels) both catch these."""
    rng = np.random.default_rng([SEED, world.size, KINDS.index(kind)])
    planted = [(f"copy_{n}", n, near_copy(b, kind, rng)) for n, _, b in world.evals]
    found, false_positives = (_find if verified else _scan)(world, planted)
    missed = [k for k, _, _ in planted if k not in found]
    max_missed, max_false = ((MAX_MISSED_VERIFIED, MAX_FALSE_POSITIVES_VERIFIED) if verified
                             else (MAX_MISSED, MAX_FALSE_POSITIVES))
    assert len(missed) <= max_missed[world.size][kind], missed
    for key, source, _ in planted:
        if key in found:  # caught for the right reason: its own evaluation image is the closest
            assert found[key].source == source
            if not verified:
                assert 0 <= found[key].distance <= DEFAULT_MAX_DISTANCE
            elif found[key].distance <= DEFAULT_MAX_DISTANCE:  # a whole-image or centre-crop row
                assert found[key].correlation >= DEFAULT_MIN_CORRELATION
            else:  # only an offset-grid row: the looser distance, the stricter score
                assert found[key].distance <= DEFAULT_OFFSET_MAX_DISTANCE
                assert found[key].correlation >= DEFAULT_OFFSET_MIN_CORRELATION
    assert false_positives <= max_false[world.size]


def test_centre_crops_are_caught_thanks_to_the_crop_variants(world):
    planted = [(f"crop_{n}", n, _centre_crop_copy(b, scale))
               for n, _, b in world.evals for scale in (0.9, 0.8)]
    found, _ = _scan(world, planted)
    plain, _ = _scan(world, planted, build_index(((n, b) for n, _, b in world.evals),
                                                 crops=(1.0,)))
    caught = sum(k in found for k, _, _ in planted)
    assert caught >= len(planted) - 2
    assert all(found[k].source == s for k, s, _ in planted if k in found)
    assert sum(k in plain for k, _, _ in planted) < caught / 2  # without them most are missed


def test_random_offset_crops_are_caught(world):
    """pHash is not translation-invariant: the offset grid finds them, verification keeps them."""
    rng = np.random.default_rng([SEED, world.size, KINDS.index("crop")])
    planted = [(f"copy_{n}", n, near_copy(b, "crop", rng)) for n, _, b in world.evals]
    found, false_positives = _find(world, planted)
    missed = [k for k, _, _ in planted if k not in found]
    assert len(missed) <= MAX_MISSED_VERIFIED[world.size]["crop"], missed
    assert all(found[k].source == s for k, s, _ in planted if k in found)
    assert false_positives <= MAX_FALSE_POSITIVES_VERIFIED[world.size]
    plain, _ = _scan(world, planted)  # pHash alone misses most of them
    assert sum(k in plain for k, _, _ in planted) < len(planted) / 4


def test_distinct_renders_of_the_same_entity_fail_verification(world):
    """pHash candidates among distinct renders abound once the distance is loose (the demo's
    renders of one entity share object, layout and background tint; on the default-size
    world a third of them have a candidate at the default distances): verification scores
    them well below a copy. Checked here at 4 bits looser than the defaults."""
    hashes, thumbs = _hashes_and_thumbs([(k, b) for k, _, b in world.distinct])
    corpus, rows, _ = candidate_pairs(hashes, world.full, DEFAULT_MAX_DISTANCE + 4,
                                      DEFAULT_OFFSET_MAX_DISTANCE + 4)
    assert len(np.unique(corpus)) > len(world.distinct) / 4  # stage 1 alone would drop these
    scores = correlations(thumbs, world.full, corpus, rows)
    threshold = np.where(world.full.offset[rows], DEFAULT_OFFSET_MIN_CORRELATION,
                         DEFAULT_MIN_CORRELATION)
    assert np.median(scores) < 0.4
    assert len(np.unique(corpus[scores >= threshold])) <= MAX_FALSE_POSITIVES_VERIFIED[world.size]


def test_distinct_renders_sit_far_from_the_threshold(world):
    """Same-entity renders are as far as other entities' renders: no entity-level matching."""
    entity_of_row = np.repeat([e for _, e, _ in world.evals], 3)  # 3 crop variants per image
    hashes = np.array([hash_bytes(b) for _, _, b in world.distinct], dtype=np.uint64)
    dist = hamming(hashes, world.index.hashes)
    same = [dist[k, entity_of_row == e].min() for k, (_, e, _) in enumerate(world.distinct)]
    assert min(same) > DEFAULT_MAX_DISTANCE + 4
    assert np.median(same) >= 20


# -- near_copy ---------------------------------------------------------------------------------

def test_near_copy_kinds_are_jpeg_deterministic_and_keep_or_shrink_the_size():
    data = _world(SEED, 64).evals[0][2]
    for kind in KINDS:
        a = near_copy(data, kind, np.random.default_rng(5))
        assert a == near_copy(data, kind, np.random.default_rng(5))
        assert a[:2] == b"\xff\xd8" and a != data
        w, h = Image.open(io.BytesIO(a)).size
        assert (w, h) == (64, 64) if kind != "resize" else 32 <= w == h <= 64
    with pytest.raises(ValueError, match="resize, reencode, crop, colour"):
        near_copy(data, "flip", np.random.default_rng(0))


# -- the library's contract --------------------------------------------------------------------

def test_hash_is_deterministic_uint64_and_equals_imagehash():
    evals = _world(SEED, 64).evals
    data = evals[0][2]
    h = hash_bytes(data)
    assert h == hash_bytes(data) == hash_image(Image.open(io.BytesIO(data)))
    assert h == int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)
    assert 0 <= h < 2**64 and np.array([h], dtype=np.uint64)[0] == h
    assert hash_bytes(evals[1][2]) != h


def test_hamming_is_symmetric_zero_on_the_diagonal_and_counts_bits():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, 50, dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, 30, dtype=np.uint64, endpoint=False)
    ab = hamming(a, b)
    assert ab.shape == (50, 30)
    np.testing.assert_array_equal(ab, hamming(b, a).T)
    np.testing.assert_array_equal(np.diag(hamming(a, a)), 0)
    ref = [[bin(int(x) ^ int(y)).count("1") for y in b] for x in a]
    np.testing.assert_array_equal(ab, ref)
    top = np.array([2**64 - 1], dtype=np.uint64)
    assert hamming(np.zeros(1, np.uint64), top)[0, 0] == 64
    assert hamming(np.zeros(0, np.uint64), a).shape == (0, 50)


def test_near_duplicates_equals_a_brute_force_reference_across_blocks():
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 2**64, 700, dtype=np.uint64, endpoint=False)  # > 2 index blocks
    ref[650] = ref[3]  # a tie: the first row wins
    index = EvalIndex(ref, tuple(f"s{i}" for i in range(len(ref))))
    corpus = rng.integers(0, 2**64, 300, dtype=np.uint64, endpoint=False)
    for i in range(0, 300, 3):  # a third are copies of index rows with i % 9 bits flipped
        bits = rng.choice(64, i % 9, replace=False)
        corpus[i] = ref[(i * 7) % len(ref)] ^ np.uint64(sum(1 << int(x) for x in bits))
    corpus[0] = ref[650]
    keys = [f"k{i}" for i in range(len(corpus))]
    dist = hamming(corpus, ref)
    for max_distance in (0, 4, DEFAULT_MAX_DISTANCE, 64):
        want = [Match(keys[i], f"s{int(dist[i].argmin())}", int(dist[i].min()))
                for i in range(len(corpus)) if dist[i].min() <= max_distance]
        for chunk in (7, 4096):
            assert near_duplicates(keys, corpus, index, max_distance, chunk=chunk) == want
    assert len(near_duplicates(keys, corpus, index, 64)) == len(corpus)
    assert near_duplicates(keys, corpus, index, 0)[0] == Match("k0", "s3", 0)


def test_empty_corpus_and_empty_index():
    index = build_index([])
    assert len(index) == 0 and index.hashes.dtype == np.uint64 and index.sources == ()
    full = EvalIndex(np.array([1, 2], dtype=np.uint64), ("a", "b"))
    assert near_duplicates([], np.zeros(0, np.uint64), full, 64) == []
    assert near_duplicates(["x"], np.array([1], dtype=np.uint64), index, 64) == []


def test_build_index_rows_and_bad_arguments():
    evals = _world(SEED, 64).evals[:2]
    index = build_index((n, b) for n, _, b in evals)
    assert len(index) == 6 and index.sources == ("0_0.jpg",) * 3 + ("0_1.jpg",) * 3
    assert index.hashes[0] == hash_bytes(evals[0][2])
    assert len(build_index(((n, b) for n, _, b in evals), crops=(1.0,))) == 2
    for crops in ((), (0.0,), (1.5,)):
        with pytest.raises(ValueError, match="crops"):
            build_index(((n, b) for n, _, b in evals), crops=crops)
    with pytest.raises(ValueError, match="sources"):
        EvalIndex(np.zeros(2, np.uint64), ("a",))


def test_near_duplicates_rejects_bad_arguments():
    index = EvalIndex(np.array([0], dtype=np.uint64), ("a",))
    with pytest.raises(ValueError, match="2 keys but 1 hashes"):
        near_duplicates(["x", "y"], np.array([0], dtype=np.uint64), index, 4)
    for bad in (-1, 65, 4.0, True):
        with pytest.raises(ValueError, match=r"max_distance must be an integer in \[0, 64\]"):
            near_duplicates(["x"], np.array([0], dtype=np.uint64), index, bad)
    for ok in (0, 64):
        assert near_duplicates(["x"], np.array([0], dtype=np.uint64), index, ok) == [
            Match("x", "a", 0)]


# -- the two-stage match -----------------------------------------------------------------------

def test_defaults_agree_with_the_config():
    cfg = DecontamConfig()
    assert cfg.max_distance == DEFAULT_MAX_DISTANCE
    assert cfg.offset_max_distance == DEFAULT_OFFSET_MAX_DISTANCE
    assert cfg.min_correlation == DEFAULT_MIN_CORRELATION
    assert cfg.offset_min_correlation == DEFAULT_OFFSET_MIN_CORRELATION
    assert cfg.offset_scales == DEFAULT_OFFSET_SCALES
    assert cfg.offset_steps == DEFAULT_OFFSET_STEPS


def test_build_index_offset_grid_rows():
    evals = _world(SEED, 64).evals[:2]
    index = build_index(((n, b) for n, _, b in evals), offset_scales=(0.8, 0.9), offset_steps=3)
    per_image = 3 + (2 * 3) ** 2
    assert len(index) == 2 * per_image and len(index.images) == 2
    assert index.sources == ("0_0.jpg",) * per_image + ("0_1.jpg",) * per_image
    np.testing.assert_array_equal(index.image, np.repeat([0, 1], per_image))
    np.testing.assert_array_equal(index.offset[:per_image], [False] * 3 + [True] * 36)
    assert index.images[0].shape == (64, 64) and index.images[0].dtype == np.uint8
    np.testing.assert_allclose(index.boxes[0], [0, 0, 1, 1])
    np.testing.assert_allclose(index.boxes[3], [0, 0, 0.8, 0.8])  # first grid row: top left
    np.testing.assert_allclose(index.boxes[3 + 35], [0.1, 0.1, 1, 1])  # last: bottom right
    assert index.hashes[0] == hash_bytes(evals[0][2])  # the centre rows are imagehash's pHash
    # the grid's floating-point pHash: a bit next to the median may differ from imagehash's
    whole = build_index(((n, b) for n, _, b in evals), crops=(1.0,), offset_scales=(1.0,),
                        offset_steps=1)
    assert whole.offset.tolist() == [False, True] * 2
    assert hamming(whole.hashes[[0, 2]], whole.hashes[[1, 3]]).diagonal().max() <= 2
    for bad in ({"offset_scales": (0.0,)}, {"offset_scales": (1.5,)}, {"offset_steps": 0}):
        with pytest.raises(ValueError, match="offset_"):
            build_index(((n, b) for n, _, b in evals), **bad)


def test_candidate_pairs_equals_a_brute_force_reference():
    rng = np.random.default_rng(2)
    n_images, per = 40, 12
    ref = rng.integers(0, 2**64, n_images * per, dtype=np.uint64, endpoint=False)
    image = np.repeat(np.arange(n_images), per)
    offset = np.tile(np.arange(per) >= 3, n_images)
    index = EvalIndex(ref, tuple(f"s{i}" for i in image), image=image, offset=offset)
    corpus = rng.integers(0, 2**64, 200, dtype=np.uint64, endpoint=False)
    for i in range(0, 200, 2):  # half are near some rows
        bits = rng.choice(64, i % 12, replace=False)
        corpus[i] = ref[(i * 13) % len(ref)] ^ np.uint64(sum(1 << int(x) for x in bits))
    dist = hamming(corpus, ref)
    for strict, loose in ((0, 0), (4, 8), (6, 6), (8, 4)):
        want = []
        for c in range(len(corpus)):
            for e in range(n_images):
                rows = np.arange(e * per, (e + 1) * per)
                limit = np.where(offset[rows], loose, strict)
                near = rows[dist[c, rows] <= limit]
                centre = near[~offset[near]]
                pick = centre if len(centre) else near
                if len(pick):
                    r = pick[np.argmin(dist[c, pick])]
                    want.append((c, r, dist[c, r]))
        for chunk in (7, 4096):
            got = candidate_pairs(corpus, index, strict, loose, chunk=chunk)
            assert list(zip(*(x.tolist() for x in got), strict=True)) == want


def test_correlations_align_crops_and_score_copies_near_one():
    world = _world(SEED, 64)
    # alignment searches sides down to 0.04 below the smallest indexed crop: 0.76 here
    index = build_index(((n, b) for n, _, b in world.evals[:3]), crops=(1.0, 0.8))
    data = world.evals[0][2]
    img = Image.open(io.BytesIO(data)).convert("RGB")
    crop = img.crop((2, 7, 55, 60)).resize((64, 64), Image.BICUBIC)  # 83 % at an offset
    other = Image.open(io.BytesIO(world.distinct[0][2]))  # same entity, another render
    flat = Image.new("L", (64, 64), 128)
    thumbs = np.stack([thumbnail(x) for x in (img, crop, other, flat)])
    scores = correlations(thumbs, index, np.arange(4), np.zeros(4, np.int64))  # row 0: whole
    assert scores[0] > 0.99  # itself
    assert scores[1] > 0.9  # found from the whole-image row: alignment recovers the crop
    assert scores[2] < 0.5
    assert scores[3] == 0.0  # nothing to correlate
    assert correlations(thumbs, index, np.zeros(0, np.int64), np.zeros(0, np.int64)).shape \
        == (0,)
    with pytest.raises(ValueError, match="no images to verify"):
        correlations(thumbs, EvalIndex(index.hashes, index.sources), np.arange(1),
                     np.zeros(1, np.int64))


def test_verification_keeps_a_pair_at_its_threshold_and_drops_it_just_above():
    world = _world(SEED, 64)
    rng = np.random.default_rng([SEED, 64, KINDS.index("crop")])
    name, _, data = world.evals[5]
    copy = near_copy(data, "crop", rng)
    hashes, thumbs = _hashes_and_thumbs([("copy", copy)])
    corpus, rows, _ = candidate_pairs(hashes, world.full, DEFAULT_MAX_DISTANCE,
                                      DEFAULT_OFFSET_MAX_DISTANCE)
    scores = correlations(thumbs, world.full, corpus, rows)
    best = float(scores.max())
    assert best >= DEFAULT_OFFSET_MIN_CORRELATION
    assert world.full.sources[rows[scores.argmax()]] == name
    at = find_copies(["copy"], hashes, thumbs, world.full, min_correlation=best,
                     offset_min_correlation=best)
    assert [(m.key, m.source, m.correlation) for m in at] == [("copy", name, best)]
    above = float(np.nextafter(best, 2.0))
    assert find_copies(["copy"], hashes, thumbs, world.full, min_correlation=above,
                       offset_min_correlation=above) == []
    # -1 verifies nothing: the closest candidate is kept, unscored
    (m,) = find_copies(["copy"], hashes, None, world.full, min_correlation=-1,
                       offset_min_correlation=-1)
    assert m.correlation is None and m.distance <= DEFAULT_OFFSET_MAX_DISTANCE


def test_unverified_without_an_offset_grid_is_near_duplicates():
    world = _world(SEED, 64)
    corpus = [(k, b) for k, _, b in world.distinct]
    hashes, _ = _hashes_and_thumbs(corpus)
    keys = [k for k, _ in corpus]
    for max_distance in (DEFAULT_MAX_DISTANCE, 20):
        want = near_duplicates(keys, hashes, world.index, max_distance)
        assert find_copies(keys, hashes, None, world.index, max_distance, min_correlation=-1,
                           offset_min_correlation=-1) == want
    assert want  # 20 bits reach many distinct renders


def test_find_copies_rejects_bad_arguments():
    world = _world(SEED, 64)
    hashes, thumbs = _hashes_and_thumbs([(k, b) for k, _, b in world.distinct[:2]])
    with pytest.raises(ValueError, match="2 keys but 1 hashes"):
        find_copies(["x", "y"], hashes[:1], thumbs, world.full)
    for bad in ({"min_correlation": 1.5}, {"offset_min_correlation": -2.0}):
        with pytest.raises(ValueError, match=r"min_correlation must be in \[-1, 1\]"):
            find_copies(["x", "y"], hashes, thumbs, world.full, **bad)
    with pytest.raises(ValueError, match="offset_max_distance"):
        find_copies(["x", "y"], hashes, thumbs, world.full, offset_max_distance=65)
    with pytest.raises(ValueError, match="one thumbnail per hash"):
        find_copies(["x", "y"], hashes, None, world.full)
