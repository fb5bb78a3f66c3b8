"""Decontamination: find training images that are near-copies of evaluation images.

As DataComp does against its evaluation sets, every evaluation image (retrieval benchmark and
labelled splits) is reduced to 64-bit perceptual hashes, the DCT pHash of ``imagehash.phash``:
grey, Lanczos-resized to 32x32, 2-D DCT, the 8x8 lowest frequencies thresholded at their median.
Resizing, JPEG re-encoding and moderate colour changes move few of those bits; a crop moves
more, and pHash is not translation-invariant (a 1-pixel shift of a 64 px image already moves up
to 16 bits), so :func:`build_index` hashes, besides the whole image, centre crops and a grid
of off-centre crops of each evaluation image (``offset_scales`` widths x heights at
``offset_steps`` positions per axis: 225 rows by default, hashed with two matrix products).

The match has two stages (:func:`find_copies`):

1. Candidates (:func:`candidate_pairs`): every (corpus image, evaluation image) pair with a
   whole-image or centre-crop row within ``max_distance`` bits (inclusive; 0 means an
   identical hash) or an offset-grid row within ``offset_max_distance`` bits. On the demo
   world this is loose on purpose: nearly a third of the distinct renders have such a candidate
   (renders of one entity share object, layout and background tint).
2. Verification (:func:`correlations`): the corpus image's 32x32 grey thumbnail is aligned
   with a crop of the evaluation image (side fractions by 0.01, 17 positions per axis, chosen
   an axis at a time by correlating row and column mean profiles, twice), and the pair is
   scored by the normalised cross-correlation of their fine detail (thumbnail minus its
   sigma-1 blur). A copy keeps its original's detail (noise, texture, edges) through resizing,
   JPEG and affine colour changes; another photo of the same object does not. Pairs from the
   pHash rows are kept from ``min_correlation``, pairs from the offset grid alone from the
   stricter ``offset_min_correlation``. The match reports the best-scoring pair.

:data:`DEFAULT_MAX_DISTANCE` and the other defaults were measured on the demo world (see their
comment). Held out (seed 1, 64 px, 200 copies per kind in 6,000 distinct renders against 2,800
evaluation images), the two stages catch 200/198/199/199 of the resized/re-encoded/cropped/
colour-edited copies (pHash alone: 200/198/24/197) and 2 distinct renders (0.03 %; pHash
alone: 61, 1.0 %). At 128 px: 200/200/200/198, and 72 renders (1.2 %; pHash alone 254, 4.2 %):
a 32x32 detail of a 128 px image is coarser, closer to the shared object than to the noise.

Blind spots: edits that clip (brightening by 10-20 %, saturation x1.4) and hue rotations
(+-6 degrees) still move a few % of the copies past the pHash threshold; q30 re-encodes a
few per thousand; crops tighter than ``offset_scales`` (below ~0.78 of a side), flips,
rotations and pastes into another picture are not searched at all. Catching those needs a
learned copy-detection descriptor.

The functions above the stage section are pure: the only input they decode is the bytes
handed to them. The ``decontam`` stage (:func:`run`) hashes the ingested shards against
``data/benchmark`` and writes ``data/decontam/dropped.parquet``; ``baseline`` and ``build``
leave those keys out, so neither the control nor any MOFI candidate trains on them. The
search is a brute-force scan (XOR + popcount) over blocks of corpus rows x index rows, so
memory stays bounded whatever the sizes; with the offset grid that is 228 rows per evaluation
image: about 25 s on one core for 6,000 corpus images x 2,800 evaluation images at 64 px
(index 5 s, corpus pHash and thumbnails 6 s, scan 8 s, verification 2-5 s; 35-45 s at 128 px,
where 3x more pairs reach verification), against 6 s for pHash alone; fine for millions of
corpus images against thousands of evaluation images. At web scale (billions x millions) a
multi-index hash table (split the hash into ``distance + 1`` parts, look up exact matches of
each part, verify candidates) would replace the scan.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import imagehash
import numpy as np
import pyarrow as pa
from PIL import Image
from scipy.ndimage import gaussian_filter

from mofi_core.config.decontam import DecontamConfig
from mofi_core.io import tables
from mofi_core.io.atomic import atomic_dir
from mofi_core.io.shards import iter_samples, list_shards
from mofi_core.parallel import ShardJob, iter_shards
from mofi_core.progress import Progress

if TYPE_CHECKING:
    from mofi_core.context import StageContext

# Chosen on the demo world, seed 0 (a default-size world: 6000 distinct corpus renders against
# 2800 evaluation images x 3 crops, 400 planted copies per kind). Going from 4 to 6 bits cuts
# the missed resize/re-encode/colour copies from 2.9 % to 0.4 % at 64 px (1.5 % to 0.3 % at
# 128 px) while the distinct renders caught rise from 0.05 % to 0.7 % (0.9 % to 3.5 %); 8 bits
# would save <= 0.25 % more copies for 3 % (64 px) to 11 % (128 px) of the corpus. Checked on
# seed 1: 0.5 % of copies missed, 1.0 % (64 px) and 4.2 % (128 px) of distinct renders caught.
# Distances are almost always even (median-thresholded bits: 32 ones per hash): 6 acts as 7.
# (Those rates are pHash alone; verification now removes most of those renders, see below.)
DEFAULT_MAX_DISTANCE = 6
# The two-stage defaults, chosen on seed 0 at 64 px (the demo's world: 6000 distinct renders,
# 2800 evaluation images, 200 planted copies per kind) and checked on seed 1:
# - the offset grid, 3 sides x 5 positions per axis (0.80-0.92 of a side, as the demo's crops):
#   every planted crop's own evaluation image has a row within 8 bits (195/200 within 6);
#   3 positions per axis left 13/200 beyond 8 bits;
# - verification: distinct renders' pairs score at most 0.55 (pHash-row pairs) and 0.75
#   (offset-grid pairs, 4,300 of them), copies at least 0.775 (resized: the 50 % thumbnails
#   lose the most detail), 0.85 (q30 re-encodes), 0.88 (crops, colour edits); 0.6 and 0.75
#   dropped 0 renders and kept every candidate copy. Seed 1: 200/198/199/199 of resize/
#   re-encode/crop/colour caught (pHash alone 200/198/24/197), 2 renders of 6000 (pHash alone
#   61); 0.75 for pHash-row pairs would have lost 4 resized copies there (lowest: 0.68).
DEFAULT_OFFSET_SCALES = (0.80, 0.86, 0.92)
DEFAULT_OFFSET_STEPS = 5
DEFAULT_OFFSET_MAX_DISTANCE = 8
DEFAULT_MIN_CORRELATION = 0.6
DEFAULT_OFFSET_MIN_CORRELATION = 0.75

_BITS = 64
_INDEX_BLOCK = 256  # index rows per scan step: cache-sized blocks run fastest
_THUMB = 32  # side of the grey thumbnails that verification compares
_WORK_SIDE = 128  # evaluation images are kept grey, at most this many pixels a side
_SCALE_STEP = 0.01  # verification's crop geometries, per axis: side fractions ...
_OFFSETS = np.arange(17) / 16  # ... times positions (fractions of the slack)
_ROUNDS = 2  # x then y alignment rounds


def hash_image(img: Image.Image) -> int:
    """The 64-bit pHash of ``img`` as an unsigned int (first DCT bit most significant), equal
    to ``int(str(imagehash.phash(img)), 16)``."""
    bits = np.asarray(imagehash.phash(img).hash, dtype=bool).reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hash_bytes(data: bytes) -> int:
    """:func:`hash_image` of an encoded image (JPEG, PNG, ...); PIL's errors propagate."""
    with Image.open(io.BytesIO(data)) as img:
        return hash_image(img)


def thumbnail(img: Image.Image) -> np.ndarray:
    """The grey ``32 x 32`` float32 thumbnail of the whole of ``img`` that verification
    compares (Lanczos, as pHash resizes)."""
    return np.asarray(img.convert("L").resize((_THUMB, _THUMB), Image.LANCZOS), np.float32)


def _as_hashes(x: np.ndarray | Sequence[int], what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.uint64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of uint64 hashes, got shape {arr.shape}")
    return arr


@dataclass(frozen=True, eq=False)
class EvalIndex:
    """Hashes of the evaluation images and their variants, one row each, with the name of
    the evaluation image every row came from.

    Indexes made by :func:`build_index` also carry what verification needs: ``images``, each
    evaluation image grey (uint8, at most 128 px a side), ``image`` (the position in
    ``images`` of every row's image), ``boxes`` (every row's crop as fractions of the sides:
    left, top, right, bottom) and ``offset`` (True for rows of the off-centre crop grid)."""

    hashes: np.ndarray  # uint64, shape (n,)
    sources: tuple[str, ...]
    image: np.ndarray | None = None  # int64, shape (n,)
    boxes: np.ndarray | None = None  # float64, shape (n, 4)
    offset: np.ndarray | None = None  # bool, shape (n,)
    images: tuple[np.ndarray, ...] = ()

    def __post_init__(self) -> None:
        hashes = _as_hashes(self.hashes, "EvalIndex.hashes")
        n = len(hashes)
        if n != len(self.sources):
            raise ValueError(f"EvalIndex has {n} hashes but {len(self.sources)} "
                             "sources; they must pair up one to one")
        image = np.zeros(n, np.int64) if self.image is None else np.asarray(self.image,
                                                                            np.int64)
        boxes = np.tile([0.0, 0.0, 1.0, 1.0], (n, 1)) if self.boxes is None else \
            np.asarray(self.boxes, np.float64).reshape(-1, 4)
        offset = np.zeros(n, bool) if self.offset is None else np.asarray(self.offset, bool)
        if not len(image) == len(boxes) == len(offset) == n:
            raise ValueError("EvalIndex image, boxes and offset need one entry per hash")
        if self.images and n and not 0 <= image.min() <= image.max() < len(self.images):
            raise ValueError("EvalIndex.image must index EvalIndex.images")
        object.__setattr__(self, "hashes", hashes)
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "images", tuple(self.images))

    def __len__(self) -> int:
        return len(self.sources)


def _centre_crop(img: Image.Image, scale: float) -> Image.Image:
    if scale == 1.0:
        return img
    w, h = img.size
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def _resampler(size: int, out: int, start: float, stop: float) -> np.ndarray:
    """``(out, size)`` weights that resample the span ``[start, stop)`` of a ``size``-long
    signal to ``out`` samples: an antialiased Lanczos-3 like PIL's, in floating point."""
    scale = (stop - start) / out
    support = max(scale, 1.0)
    centre = start + (np.arange(out)[:, None] + 0.5) * scale
    t = (np.arange(size)[None, :] + 0.5 - centre) / support
    w = np.where(np.abs(t) < 3, np.sinc(t) * np.sinc(t / 3), 0.0)
    return w / w.sum(axis=1, keepdims=True)


_DCT8 = 2 * np.cos(np.pi * np.arange(8)[:, None] * (2 * np.arange(32) + 1) / 64)  # pHash's DCT


def _grid(scales: Sequence[float], steps: int) -> tuple[tuple[float, float], ...]:
    """Per-axis crop geometries of the offset grid: (side fraction, position in the slack)."""
    positions = np.linspace(0.0, 1.0, steps) if steps > 1 else np.array([0.5])
    return tuple((float(s), float(p)) for s in scales for p in positions)


@functools.lru_cache(maxsize=16)
def _dct_resamplers(size: int, axis: tuple[tuple[float, float], ...]) -> np.ndarray:
    """pHash's 8 low DCT rows after resampling each ``axis`` crop of a ``size``-long axis to
    32 samples: shape ``(len(axis) * 8, size)``."""
    return np.concatenate([_DCT8 @ _resampler(size, 32, (size - size * s) * p,
                                              (size - size * s) * p + size * s)
                           for s, p in axis])


def _offset_hashes(greys: np.ndarray, axis: tuple[tuple[float, float], ...]) -> np.ndarray:
    """pHashes of every (y, x) pair of ``axis`` crops of each of ``greys`` (b, h, w): the
    resize and the 8x8 low DCT are both linear, so all crops of a batch take two matrix
    products (a floating-point pHash: a bit next to the median may differ from imagehash's).
    Shape ``(b, len(axis) ** 2)``."""
    n, h, w = greys.shape
    a = len(axis)
    # two 2-D products (one per axis) over the whole batch
    down = _dct_resamplers(h, axis) @ greys.transpose(1, 0, 2).reshape(h, n * w)  # (a8, b w)
    down = down.reshape(a * 8, n, w).transpose(1, 0, 2).reshape(n * a * 8, w)
    low = (down @ _dct_resamplers(w, axis).T).reshape(n, a, 8, a, 8)
    low = low.transpose(0, 1, 3, 2, 4).reshape(n * a * a, 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").reshape(n, a * a).astype(np.uint64)


def _work_grey(img: Image.Image) -> np.ndarray:
    grey = img.convert("L")
    if max(grey.size) > _WORK_SIDE:
        grey = grey.copy()
        grey.thumbnail((_WORK_SIDE, _WORK_SIDE), Image.LANCZOS)
    return np.asarray(grey, np.uint8)


def build_index(images: Iterable[tuple[str, bytes]],
                crops: Sequence[float] = (1.0, 0.9, 0.8),
                offset_scales: Sequence[float] = (), offset_steps: int = 5) -> EvalIndex:
    """Index ``(name, encoded image)`` pairs: one row per image and centre-crop scale (the
    fraction of each side kept; 1.0 is the whole image), so a cropped copy still matches;
    then, with ``offset_scales``, one row per crop of the offset grid: every pair of a width
    and a height in ``offset_scales`` at ``offset_steps`` positions per axis (0 to 1 of the
    slack), ``(len(offset_scales) * offset_steps) ** 2`` rows per image."""
    scales = [float(s) for s in crops]
    if not scales or any(not 0.0 < s <= 1.0 for s in scales):
        raise ValueError(f"crops must be a non-empty list of scales in (0, 1], got {crops!r}")
    if any(not 0.0 < float(s) <= 1.0 for s in offset_scales):
        raise ValueError(f"offset_scales must be scales in (0, 1], got {offset_scales!r}")
    if offset_steps < 1:
        raise ValueError(f"offset_steps must be >= 1, got {offset_steps}")
    axis = _grid(offset_scales, offset_steps)
    grid_boxes = np.array([[(1 - sx) * px, (1 - sy) * py, (1 - sx) * px + sx,
                            (1 - sy) * py + sy] for sy, py in axis for sx, px in axis])
    names: list[str] = []
    centre: list[list[int]] = []
    boxes: list[np.ndarray] = []
    greys: list[np.ndarray] = []
    for name, data in images:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            centre.append([hash_image(_centre_crop(img, s)) for s in scales])
            w, h = img.size
            greys.append(_work_grey(img))
        names.append(name)
        for s in scales:
            cw, ch = max(1, round(w * s)), max(1, round(h * s))
            left, top = (w - cw) // 2, (h - ch) // 2
            boxes.append(np.array([[left / w, top / h, (left + cw) / w, (top + ch) / h]]))
    grid = np.zeros((len(greys), len(axis) ** 2), np.uint64)
    if axis:  # batches of one shape: large matrix products
        shapes = np.array([g.shape for g in greys]).reshape(-1, 2)
        for shape in np.unique(shapes, axis=0):
            (same,) = np.nonzero((shapes == shape).all(axis=1))
            for start in range(0, len(same), 256):
                part = same[start:start + 256]
                grid[part] = _offset_hashes(np.stack([greys[i] for i in part]).astype(
                    np.float64), axis)
    per_image = len(scales) + len(axis) ** 2
    hashes = np.concatenate([np.array(centre, np.uint64).reshape(-1, len(scales)), grid],
                            axis=1).reshape(-1)
    centre_boxes = np.concatenate(boxes).reshape(-1, len(scales), 4) if boxes else \
        np.zeros((0, len(scales), 4))
    all_boxes = np.concatenate([centre_boxes, np.broadcast_to(
        grid_boxes.reshape(1, -1, 4), (len(names), len(axis) ** 2, 4))], axis=1).reshape(-1, 4)
    return EvalIndex(hashes, tuple(n for n in names for _ in range(per_image)),
                     np.repeat(np.arange(len(names)), per_image),
                     all_boxes, np.tile([False] * len(scales) + [True] * len(axis) ** 2,
                                        len(names)), tuple(greys))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between two 1-D uint64 hash arrays: uint8, shape
    ``(len(a), len(b))``. Allocates ``9 * len(a) * len(b)`` bytes; use
    :func:`near_duplicates` for large inputs."""
    a, b = _as_hashes(a, "a"), _as_hashes(b, "b")
    return np.bitwise_count(a[:, None] ^ b[None, :])


@dataclass(frozen=True)
class Match:
    """Corpus image ``key`` is ``distance`` bits from a variant of evaluation image
    ``source``: its closest one (:func:`near_duplicates`) or the best-verified pair
    (:func:`find_copies`), whose verification score is ``correlation`` (None when nothing
    was verified)."""

    key: str
    source: str
    distance: int
    correlation: float | None = None


def _check_distance(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) \
            or not 0 <= value <= _BITS:
        raise ValueError(f"{what} must be an integer in [0, {_BITS}], got {value!r}")


def near_duplicates(keys: Sequence[str], hashes: np.ndarray, index: EvalIndex, max_distance: int,
                    chunk: int = 4096) -> list[Match]:
    """Every corpus ``key`` (with its hash at the same position in ``hashes``) whose closest
    index row is at most ``max_distance`` bits away, in corpus order, with that row's source
    (the first such row on ties). pHash alone: no verification.

    Scans blocks of ``chunk`` corpus rows x 256 index rows: scratch memory is about
    ``2.3 KB * chunk`` (9 MB at 4096) whatever the corpus and index sizes.
    """
    hashes = _as_hashes(hashes, "hashes")
    if len(keys) != len(hashes):
        raise ValueError(f"near_duplicates got {len(keys)} keys but {len(hashes)} hashes; "
                         "they must pair up one to one")
    _check_distance(max_distance, "max_distance")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    ref = index.hashes
    matches: list[Match] = []
    if len(hashes) == 0 or len(ref) == 0:
        return matches
    for start in range(0, len(hashes), chunk):
        block = hashes[start:start + chunk]
        best = np.full(len(block), _BITS + 1, dtype=np.uint8)
        best_row = np.zeros(len(block), dtype=np.int64)
        for rstart in range(0, len(ref), _INDEX_BLOCK):
            dist = np.bitwise_count(block[:, None] ^ ref[None, rstart:rstart + _INDEX_BLOCK])
            low = dist.min(axis=1)
            better = low < best
            best[better] = low[better]
            wanted = np.flatnonzero(better & (low <= max_distance))  # rows that need a source
            if len(wanted):
                best_row[wanted] = dist[wanted].argmin(axis=1) + rstart
        for i in np.flatnonzero(best <= max_distance):
            matches.append(Match(str(keys[start + i]), index.sources[best_row[i]], int(best[i])))
    return matches


def candidate_pairs(hashes: np.ndarray, index: EvalIndex, max_distance: int,
                    offset_max_distance: int, chunk: int = 4096
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage 1: every (corpus image, evaluation image) pair with an index row of that image
    within ``max_distance`` bits (whole image and centre crops) or ``offset_max_distance``
    bits (offset-grid rows) of the corpus hash, as three int64 arrays: corpus position,
    the pair's row and its distance, sorted by corpus position. The pair's row is its closest
    whole-image or centre-crop row within ``max_distance`` when there is one (the pair then
    counts as a pHash match, verified at ``min_correlation``), else its closest offset row;
    the first such row on ties.

    The same bounded scan as :func:`near_duplicates`: ``chunk`` corpus rows x 256 index rows
    at a time, plus the few rows within reach."""
    hashes = _as_hashes(hashes, "hashes")
    _check_distance(max_distance, "max_distance")
    _check_distance(offset_max_distance, "offset_max_distance")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    ref = index.hashes
    limit = np.where(index.offset, offset_max_distance, max_distance).astype(np.uint8)
    reach = int(limit.max()) if len(limit) else -1
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, len(hashes), chunk):
        block = hashes[start:start + chunk]
        for rstart in range(0, len(ref), _INDEX_BLOCK):
            stop = rstart + _INDEX_BLOCK
            dist = np.bitwise_count(block[:, None] ^ ref[None, rstart:stop])
            near = np.flatnonzero(dist.min(axis=1) <= reach)
            if len(near):
                sub = dist[near]
                i, j = np.nonzero(sub <= limit[None, rstart:stop])
                found.append((near[i] + start, j + rstart, sub[i, j].astype(np.int64)))
    if not found:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    corpus, rows, dist = (np.concatenate(x) for x in zip(*found, strict=True))
    image = index.image[rows]
    # per pair: a centre row within reach first, then the closest row, then the first one
    order = np.lexsort((rows, dist, index.offset[rows], image, corpus))
    corpus, rows, dist, image = corpus[order], rows[order], dist[order], image[order]
    first = np.ones(len(order), bool)
    first[1:] = (corpus[1:] != corpus[:-1]) | (image[1:] != image[:-1])
    return corpus[first], rows[first], dist[first]


# -- stage 2: verification ---------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _geometries(size: int, low: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verification's crop geometries along one ``size``-long axis: side fractions from 1
    down to ``low`` by 0.01 times 17 positions; their (side, position) and resamplers to
    32 samples, shape ``(k, 32, size)`` float32."""
    sides = np.round(np.arange(1.0, low - 1e-9, -_SCALE_STEP), 6)
    geo = np.array([(s, p) for s in sides for p in _OFFSETS])
    mats = np.stack([_resampler(size, _THUMB, (size - size * s) * p, (size - size * s) * p
                                + size * s) for s, p in geo]).astype(np.float32)
    return geo, mats, mats.reshape(len(geo) * _THUMB, size)


def _nearest(geo: np.ndarray, side: np.ndarray, pos: np.ndarray) -> np.ndarray:
    cost = (geo[None, :, 0] - side[:, None]) ** 2 / _SCALE_STEP ** 2 + \
        (geo[None, :, 1] - pos[:, None]) ** 2 * len(_OFFSETS) ** 2
    return cost.argmin(axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    """``x`` centred and scaled to unit norm along its last axis (all-zero where flat)."""
    x = x - x.mean(axis=-1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=-1, keepdims=True))
    return x / np.where(norm > 0, norm, 1)


def _align(profile: np.ndarray, signal: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """Per pair, the geometry whose resampled ``signal`` (p, size) correlates best with the
    unit ``profile`` (p, 32)."""
    resampled = (signal @ mats.T).reshape(len(signal), -1, _THUMB)  # (p, k, 32)
    dot = np.einsum("pkn,pn->pk", resampled, profile)
    total = resampled.sum(axis=2)
    spread = np.einsum("pkn,pkn->pk", resampled, resampled) - total * total / _THUMB
    return (dot / np.sqrt(np.maximum(spread, 1e-6))).argmax(axis=1)


def _detail(x: np.ndarray) -> np.ndarray:
    """The fine detail of (p, 32, 32) thumbnails: each minus its Gaussian blur (sigma 1)."""
    return x - gaussian_filter(x, (0, 1.0, 1.0), mode="nearest")


def correlations(thumbs: np.ndarray, index: EvalIndex, corpus: np.ndarray, rows: np.ndarray,
                 batch: int = 256) -> np.ndarray:
    """Stage 2: for each candidate pair (``thumbs[corpus[i]]``, the image of index row
    ``rows[i]``), align the corpus thumbnail with a crop of the evaluation image and score
    the match: float64 scores in [-1, 1], one per pair.

    Alignment starts from the row's crop and searches side fractions (steps of 0.01, down to
    0.04 below the smallest indexed crop) and positions (17 per axis) one axis at a time,
    twice, by correlating row and column mean profiles; the score is the normalised
    cross-correlation of the fine detail (thumbnail minus its blur) of the corpus thumbnail
    and of the aligned crop, both 32 x 32 grey. Copies keep the detail (noise, texture, edges)
    of their original; another photo of the same object does not."""
    if not index.images:
        raise ValueError("this EvalIndex has no images to verify against; build it with "
                         "build_index")
    thumbs = np.asarray(thumbs, np.float32).reshape(-1, _THUMB, _THUMB)
    corpus, rows = np.asarray(corpus, np.int64), np.asarray(rows, np.int64)
    scores = np.zeros(len(rows))
    if not len(rows):
        return scores
    low = max(_SCALE_STEP, round(float(np.min(index.boxes[:, 2:] - index.boxes[:, :2])), 2)
              - 0.04)
    image = index.image[rows]
    shapes = np.array([index.images[i].shape for i in image])
    for shape in np.unique(shapes, axis=0):
        (group,) = np.nonzero((shapes == shape).all(axis=1))
        geo_y, mats_y, flat_y = _geometries(int(shape[0]), low)
        _, mats_x, flat_x = _geometries(int(shape[1]), low)
        for start in range(0, len(group), batch):
            part = group[start:start + batch]
            grey = np.stack([index.images[i] for i in image[part]]).astype(np.float32)
            thumb = thumbs[corpus[part]]
            across, down = _unit(thumb.mean(axis=1)), _unit(thumb.mean(axis=2))
            box = index.boxes[rows[part]]
            side = box[:, 3] - box[:, 1]
            slack = 1 - side
            ky = _nearest(geo_y, side, np.where(slack > 0, box[:, 1] / np.maximum(slack, 1e-9),
                                                0.5))
            for _ in range(_ROUNDS):
                band = np.einsum("ph,phw->pw", mats_y[ky].mean(axis=1), grey)
                kx = _align(across, band, flat_x)
                band = np.einsum("pw,phw->ph", mats_x[kx].mean(axis=1), grey)
                ky = _align(down, band, flat_y)
            crop = mats_y[ky] @ grey @ mats_x[kx].transpose(0, 2, 1)
            a = _unit(_detail(crop).reshape(len(part), -1))
            b = _unit(_detail(thumb).reshape(len(part), -1))
            scores[part] = np.einsum("pi,pi->p", a, b)
    return scores


def find_copies(keys: Sequence[str], hashes: np.ndarray, thumbs: np.ndarray | None,
                index: EvalIndex, max_distance: int = DEFAULT_MAX_DISTANCE,
                offset_max_distance: int = DEFAULT_OFFSET_MAX_DISTANCE,
                min_correlation: float = DEFAULT_MIN_CORRELATION,
                offset_min_correlation: float = DEFAULT_OFFSET_MIN_CORRELATION,
                chunk: int = 4096) -> list[Match]:
    """The two-stage match: every corpus ``key`` with a candidate pair
    (:func:`candidate_pairs`) whose verification score (:func:`correlations`) is at least
    ``min_correlation`` (pairs found by a whole-image or centre-crop row) or
    ``offset_min_correlation`` (pairs found by an offset-grid row only), in corpus order, with
    the best-scoring pair's source, distance and score (the closest pair on equal scores).

    A threshold of -1 keeps those pairs unverified; with both at -1 nothing is verified
    (``thumbs`` may be None and ``correlation`` is None): the closest candidate is kept, and
    with no offset rows in ``index`` that is :func:`near_duplicates`."""
    hashes = _as_hashes(hashes, "hashes")
    if len(keys) != len(hashes):
        raise ValueError(f"find_copies got {len(keys)} keys but {len(hashes)} hashes; "
                         "they must pair up one to one")
    for name, value in (("min_correlation", min_correlation),
                        ("offset_min_correlation", offset_min_correlation)):
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [-1, 1], got {value!r}")
    corpus, rows, dist = candidate_pairs(hashes, index, max_distance, offset_max_distance, chunk)
    score = None
    if max(min_correlation, offset_min_correlation) > -1.0:
        if thumbs is None or len(thumbs) != len(hashes):
            raise ValueError("verification needs one thumbnail per hash (see thumbnail)")
        threshold = np.where(index.offset[rows], offset_min_correlation, min_correlation)
        check = threshold > -1.0
        score = np.full(len(rows), np.nan)
        score[check] = correlations(thumbs, index, corpus[check], rows[check])
        keep = ~check | (score >= threshold)
        corpus, rows, dist, score = corpus[keep], rows[keep], dist[keep], score[keep]
        order = np.lexsort((rows, dist, -np.nan_to_num(score, nan=-2.0), corpus))
    else:
        order = np.lexsort((rows, dist, corpus))
    matches: list[Match] = []
    last = -1
    for k in order:
        if corpus[k] != last:
            last = int(corpus[k])
            value = None if score is None or np.isnan(score[k]) else float(score[k])
            matches.append(Match(str(keys[last]), index.sources[rows[k]], int(dist[k]), value))
    return matches


# -- the stage ---------------------------------------------------------------------------------

DROPPED = "dropped.parquet"
DROPPED_SCHEMA = pa.schema([("key", pa.string()), ("source", pa.string()),
                            ("distance", pa.int32())])
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def evaluation_images(folder: Path) -> Iterator[tuple[str, bytes]]:
    """Every image file under ``folder`` (the GPR1200 set and the labelled splits), by path."""
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            yield path.relative_to(folder).as_posix(), path.read_bytes()


def hash_shard(job: ShardJob) -> tuple[list[Path], dict]:
    """The pHash and the verification thumbnail of every image of one ingested shard:
    ``{"keys": [...], "hashes": [...], "thumbs": uint8 array (n, 32, 32)}``."""
    keys, hashes, thumbs = [], [], []
    for sample in iter_samples(job.source):
        data = sample.get("jpg")
        if data is None:
            raise ValueError(f"sample {sample['__key__']} has no .jpg; ingest writes one for "
                             "every sample it keeps, so re-run ingest")
        keys.append(sample["__key__"])
        with Image.open(io.BytesIO(data)) as img:
            hashes.append(hash_image(img))
            thumbs.append(thumbnail(img).astype(np.uint8))
    return [], {"keys": keys, "hashes": hashes,
                "thumbs": np.stack(thumbs) if thumbs else np.zeros((0, _THUMB, _THUMB), np.uint8)}


def read_dropped(folder: Path) -> frozenset[str]:
    """The keys ``decontam`` dropped (empty when the stage checked nothing)."""
    table = tables.read_table(Path(folder) / DROPPED, DROPPED_SCHEMA)
    return frozenset(table["key"].to_pylist())


def curated_keys(ingest_dir: Path, decontam_dir: Path) -> set[str]:
    """The keys that reach curation: what ingest kept, less decontam's near-copies (label
    numbers count these and only these, wherever they are computed)."""
    manifest = tables.read_table(Path(ingest_dir) / "manifest.parquet", tables.MANIFEST)
    return set(manifest["key"].to_pylist()) - read_dropped(decontam_dir)


def decontaminate(shards: list[Path], benchmark: Path, out_dir: Path, cfg: DecontamConfig
                  ) -> dict:
    """Hash ``shards`` and ``benchmark``'s images; write the near-duplicates to ``out_dir``."""
    matches: list[Match] = []
    checked = index_rows = offset_rows = eval_count = 0
    if cfg.method == "phash":
        named = list(evaluation_images(benchmark))
        if not named:
            raise FileNotFoundError(f"no evaluation images under {benchmark}; decontam needs "
                                    "the benchmark it protects: set decontam.against to your "
                                    "GPR1200 folder (or decontam.method: none)")
        index = build_index(named, cfg.crops, cfg.offset_scales, cfg.offset_steps)
        eval_count = len(named)
        offset_rows = int(index.offset.sum())
        index_rows = len(index) - offset_rows
        jobs = [ShardJob(p.stem, str(p), None) for p in shards]
        progress = Progress("decontam", len(jobs), "shard")
        for _, summary, _ in iter_shards(hash_shard, jobs, lambda j: [], None):
            keys = summary["keys"]
            checked += len(keys)
            matches += find_copies(keys, np.array(summary["hashes"], dtype=np.uint64),
                                   summary["thumbs"], index, cfg.max_distance,
                                   cfg.offset_max_distance, cfg.min_correlation,
                                   cfg.offset_min_correlation)
            progress.advance(dropped=len(matches))
        progress.close()
    with atomic_dir(out_dir) as out:
        tables.write_table(out / DROPPED, pa.table({
            "key": pa.array([m.key for m in matches], pa.string()),
            "source": pa.array([m.source for m in matches], pa.string()),
            "distance": pa.array([m.distance for m in matches], pa.int32())}), DROPPED_SCHEMA)
    return {"method": cfg.method, "checked": checked, "dropped": len(matches),
            "evaluation_images": eval_count, "index_rows": index_rows,
            "offset_rows": offset_rows}


def against(cfg: DecontamConfig, lay) -> Path:
    """The evaluation images to protect: ``decontam.against`` (relative to the project root),
    else the demo world's ``data/benchmark``."""
    if not cfg.against:
        return lay.benchmark
    path = lay.under_root(cfg.against)
    if not path.is_dir():
        raise FileNotFoundError(f"decontam.against: {path} is not a folder; give the folder "
                                "of evaluation images to protect (your GPR1200 download)")
    return path


def run(cfg: DecontamConfig, ctx: StageContext) -> dict:
    """Stage ``decontam``: near-duplicates of evaluation images -> ``data/decontam``."""
    lay = ctx.layout
    stats = decontaminate(list_shards(lay.ingest / "shards"), against(cfg, lay), lay.decontam,
                          cfg)
    print(f"decontam: {stats['dropped']} of {stats['checked']} images are near-copies of "
          f"evaluation images (method {cfg.method}, max distance {cfg.max_distance}); "
          "baseline and build leave them out")
    return stats
