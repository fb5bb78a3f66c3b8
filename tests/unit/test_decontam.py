"""Decontamination: planted near-copies of evaluation images are found, distinct renders are not.

The world is the demo's: entities from ``make_entities``, images from ``render`` as
``_benchmark_image`` draws them, at the demo's 64 px and at 128 px. ``DEFAULT_MAX_DISTANCE``
was chosen on seed 0; these tests run on seed 1, which did not choose it. The bounds below are
what seed 1 measured (misses out of 120 copies, false positives out of 160 distinct renders).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import imagehash
import numpy as np
import pytest
from PIL import Image

from mofi_core.curate.decontam import (
    DEFAULT_MAX_DISTANCE,
    EvalIndex,
    Match,
    build_index,
    hamming,
    hash_bytes,
    hash_image,
    near_duplicates,
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


@dataclass
class World:
    size: int
    evals: list[tuple[str, int, bytes]]  # (name, entity, jpeg): the evaluation set
    distinct: list[tuple[str, int, bytes]]  # other renders of the same entities: clean corpus
    index: EvalIndex


@functools.cache
def _world(seed: int, size: int) -> World:
    entities = make_entities(N_ENTITIES, np.random.default_rng(seed))
    evals, distinct = [], []
    for i, e in enumerate(entities):
        obj = [(e, draw_object(e))]  # what _benchmark_image renders
        rng = np.random.default_rng([seed, size, i])
        evals += [(f"{i}_{j}.jpg", i, render(obj, size, rng)) for j in range(N_EVAL)]
        distinct += [(f"d{i}_{j}", i, render(obj, size, rng)) for j in range(N_DISTINCT)]
    return World(size, evals, distinct, build_index((n, b) for n, _, b in evals))


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

@pytest.mark.parametrize("kind", ["resize", "reencode", "colour"])
def test_planted_near_copies_are_caught_and_distinct_renders_are_not(world, kind):
    rng = np.random.default_rng([SEED, world.size, KINDS.index(kind)])
    planted = [(f"copy_{n}", n, near_copy(b, kind, rng)) for n, _, b in world.evals]
    found, false_positives = _scan(world, planted)
    missed = [k for k, _, _ in planted if k not in found]
    assert len(missed) <= MAX_MISSED[world.size][kind], missed
    for key, source, _ in planted:
        if key in found:  # caught for the right reason: its own evaluation image is the closest
            assert found[key].source == source
            assert 0 <= found[key].distance <= DEFAULT_MAX_DISTANCE
    assert false_positives <= MAX_FALSE_POSITIVES[world.size]


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


@pytest.mark.xfail(strict=True, reason="known blind spot: pHash is not translation-invariant; "
                   "a crop at a random offset is caught ~10-15 % of the time")
def test_random_offset_crops_are_caught(world):
    rng = np.random.default_rng([SEED, world.size, KINDS.index("crop")])
    planted = [(f"copy_{n}", n, near_copy(b, "crop", rng)) for n, _, b in world.evals]
    found, _ = _scan(world, planted)
    assert all(k in found for k, _, _ in planted)


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
