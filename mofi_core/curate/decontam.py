"""Decontamination: find training images that are near-copies of evaluation images.

As DataComp does against its evaluation sets, every evaluation image (retrieval benchmark and
labelled splits) is reduced to a 64-bit perceptual hash, the DCT pHash of ``imagehash.phash``:
grey, Lanczos-resized to 32x32, 2-D DCT, the 8x8 lowest frequencies thresholded at their median.
Resizing, JPEG re-encoding and moderate colour changes move few of those bits; a crop moves
more, so :func:`build_index` also hashes centre crops of each evaluation image. A corpus image
is a near-duplicate when the Hamming distance between its hash and the closest index row is at
most ``max_distance`` bits (inclusive): 0 means an identical hash, 64 matches everything.
:data:`DEFAULT_MAX_DISTANCE` is the threshold measured on the demo world (see its comment).

Blind spots, measured on the demo world: pHash is not translation-invariant, so a crop at a
random offset (80-92 % of each side) is caught only 10-15 % of the time, centre-crop variants
notwithstanding (a 1-pixel shift of a 64 px image already moves up to 16 bits); edits that clip
(brightening by 10-20 %, saturation x1.4) and hue rotations (+-6 degrees) move a few % of the
copies past the threshold. Catching those needs a learned copy-detection descriptor.

The functions above the stage section are pure: the only input they decode is the bytes
handed to them. The ``decontam`` stage (:func:`run`) hashes the ingested shards against
``data/benchmark`` and writes ``data/decontam/dropped.parquet``; ``baseline`` and ``build``
leave those keys out, so neither the control nor any MOFI candidate trains on them. The
search is a brute-force scan (XOR + popcount) over blocks of corpus rows x index rows, so
memory stays bounded whatever the sizes; that is fine for millions of corpus images against
thousands of evaluation images. At web scale (billions x millions) a multi-index hash table
(split the hash into ``max_distance + 1`` parts, look up exact matches of each part, verify
candidates) would replace the scan.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import imagehash
import numpy as np
import pyarrow as pa
from PIL import Image

from mofi_core.config import DecontamConfig
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
DEFAULT_MAX_DISTANCE = 6

_BITS = 64
_INDEX_BLOCK = 256  # index rows per scan step: cache-sized blocks run fastest


def hash_image(img: Image.Image) -> int:
    """The 64-bit pHash of ``img`` as an unsigned int (first DCT bit most significant), equal
    to ``int(str(imagehash.phash(img)), 16)``."""
    bits = np.asarray(imagehash.phash(img).hash, dtype=bool).reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hash_bytes(data: bytes) -> int:
    """:func:`hash_image` of an encoded image (JPEG, PNG, ...); PIL's errors propagate."""
    with Image.open(io.BytesIO(data)) as img:
        return hash_image(img)


def _as_hashes(x: np.ndarray | Sequence[int], what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.uint64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of uint64 hashes, got shape {arr.shape}")
    return arr


@dataclass(frozen=True, eq=False)
class EvalIndex:
    """Hashes of the evaluation images and their variants, one row each, with the name of
    the evaluation image every row came from."""

    hashes: np.ndarray  # uint64, shape (n,)
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        hashes = _as_hashes(self.hashes, "EvalIndex.hashes")
        if len(hashes) != len(self.sources):
            raise ValueError(f"EvalIndex has {len(hashes)} hashes but {len(self.sources)} "
                             "sources; they must pair up one to one")
        object.__setattr__(self, "hashes", hashes)
        object.__setattr__(self, "sources", tuple(self.sources))

    def __len__(self) -> int:
        return len(self.sources)


def _centre_crop(img: Image.Image, scale: float) -> Image.Image:
    if scale == 1.0:
        return img
    w, h = img.size
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def build_index(images: Iterable[tuple[str, bytes]],
                crops: Sequence[float] = (1.0, 0.9, 0.8)) -> EvalIndex:
    """Index ``(name, encoded image)`` pairs: one row per image and centre-crop scale (the
    fraction of each side kept; 1.0 is the whole image), so a cropped copy still matches."""
    scales = [float(s) for s in crops]
    if not scales or any(not 0.0 < s <= 1.0 for s in scales):
        raise ValueError(f"crops must be a non-empty list of scales in (0, 1], got {crops!r}")
    hashes: list[int] = []
    sources: list[str] = []
    for name, data in images:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            for s in scales:
                hashes.append(hash_image(_centre_crop(img, s)))
                sources.append(name)
    return EvalIndex(np.array(hashes, dtype=np.uint64), tuple(sources))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between two 1-D uint64 hash arrays: uint8, shape
    ``(len(a), len(b))``. Allocates ``9 * len(a) * len(b)`` bytes; use
    :func:`near_duplicates` for large inputs."""
    a, b = _as_hashes(a, "a"), _as_hashes(b, "b")
    return np.bitwise_count(a[:, None] ^ b[None, :])


@dataclass(frozen=True)
class Match:
    """Corpus image ``key`` is ``distance`` bits from a variant of evaluation image
    ``source``, its closest one."""

    key: str
    source: str
    distance: int


def near_duplicates(keys: Sequence[str], hashes: np.ndarray, index: EvalIndex, max_distance: int,
                    chunk: int = 4096) -> list[Match]:
    """Every corpus ``key`` (with its hash at the same position in ``hashes``) whose closest
    index row is at most ``max_distance`` bits away, in corpus order, with that row's source
    (the first such row on ties).

    Scans blocks of ``chunk`` corpus rows x 256 index rows: scratch memory is about
    ``2.3 KB * chunk`` (9 MB at 4096) whatever the corpus and index sizes.
    """
    hashes = _as_hashes(hashes, "hashes")
    if len(keys) != len(hashes):
        raise ValueError(f"near_duplicates got {len(keys)} keys but {len(hashes)} hashes; "
                         "they must pair up one to one")
    if isinstance(max_distance, bool) or not isinstance(max_distance, int | np.integer) \
            or not 0 <= max_distance <= _BITS:
        raise ValueError(f"max_distance must be an integer in [0, {_BITS}], got {max_distance!r}")
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
    """The pHash of every image of one ingested shard: ``{"keys": [...], "hashes": [...]}``."""
    keys, hashes = [], []
    for sample in iter_samples(job.source):
        data = sample.get("jpg")
        if data is None:
            raise ValueError(f"sample {sample['__key__']} has no .jpg; ingest writes one for "
                             "every sample it keeps, so re-run ingest")
        keys.append(sample["__key__"])
        hashes.append(hash_bytes(data))
    return [], {"keys": keys, "hashes": hashes}


def read_dropped(folder: Path) -> frozenset[str]:
    """The keys ``decontam`` dropped (empty when the stage checked nothing)."""
    table = tables.read_table(Path(folder) / DROPPED, DROPPED_SCHEMA)
    return frozenset(table["key"].to_pylist())


def decontaminate(shards: list[Path], benchmark: Path, out_dir: Path, cfg: DecontamConfig
                  ) -> dict:
    """Hash ``shards`` and ``benchmark``'s images; write the near-duplicates to ``out_dir``."""
    matches: list[Match] = []
    checked = index_rows = eval_count = 0
    if cfg.method == "phash":
        named = list(evaluation_images(benchmark))
        if not named:
            raise FileNotFoundError(f"no evaluation images under {benchmark}; decontam needs "
                                    "the benchmark it protects (or decontam.method: none)")
        index = build_index(named, cfg.crops)
        eval_count, index_rows = len(named), len(index)
        jobs = [ShardJob(p.stem, str(p), None) for p in shards]
        progress = Progress("decontam", len(jobs), "shard")
        for _, summary, _ in iter_shards(hash_shard, jobs, lambda j: [], None):
            keys = summary["keys"]
            checked += len(keys)
            matches += near_duplicates(keys, np.array(summary["hashes"], dtype=np.uint64),
                                       index, cfg.max_distance)
            progress.advance(dropped=len(matches))
        progress.close()
    with atomic_dir(out_dir) as out:
        tables.write_table(out / DROPPED, pa.table({
            "key": pa.array([m.key for m in matches], pa.string()),
            "source": pa.array([m.source for m in matches], pa.string()),
            "distance": pa.array([m.distance for m in matches], pa.int32())}), DROPPED_SCHEMA)
    return {"method": cfg.method, "checked": checked, "dropped": len(matches),
            "evaluation_images": eval_count, "index_rows": index_rows}


def run(cfg: DecontamConfig, ctx: StageContext) -> dict:
    """Stage ``decontam``: near-duplicates of evaluation images -> ``data/decontam``."""
    lay = ctx.layout
    stats = decontaminate(list_shards(lay.ingest / "shards"), lay.benchmark, lay.decontam, cfg)
    print(f"decontam: {stats['dropped']} of {stats['checked']} images are near-copies of "
          f"evaluation images (method {cfg.method}, max distance {cfg.max_distance}); "
          "baseline and build leave them out")
    return stats
