"""Image retrieval evaluated as the official GPR1200 evaluation does it, vectorised.

The protocol (Visual-Computing/GPR1200, ``eval/utils.py`` and ``eval/GPR1200.py``):

* files are ordered by the integer category before the first ``_`` of their names;
* every image is a query against *all* images, itself included: it stays in its own ranking and
  counts among the relevant items (``n_positive`` = size of the query's class);
* ranking = ``np.argsort(similarities, axis=1)[:, ::-1]`` on ``features @ features.T``;
* ``AP = sum over relevant positions i (0-based) of (relevant seen so far / (i + 1))``, divided by
  ``n_positive``; mAP is the mean AP; on the real benchmark the six domain mAPs are the means over
  the query blocks of 2,000 images listed in ``GPR1200_DOMAINS`` order, i.e. categories
  0-199, 200-399, ... (here taken from the categories, so row order does not matter).

How this module stays bit-for-bit on the official rankings while never holding the N x N matrix:

* similarities are products of the features exactly as given, in their own dtype, as the
  official code forms them (no normalisation or cast: the project's own embeddings are
  L2-normalised float32 once, where ``embed_files`` makes them), one block of query rows at a
  time. BLAS picks its kernel by problem shape, and kernels may sum in different
  orders: numpy hands a one-row product to gemv, and OpenBLAS treats very thin products apart,
  so blocks of fewer than ``MIN_BLOCK_ROWS`` rows are computed padded to that height. Up to
  ~4,700 images the default block is the whole set, i.e. the official call itself. With numpy
  2.4's OpenBLAS (SkylakeX kernels) block rows were checked to carry the same bits as the
  official full product at 200-2,000 images (dims 32-512) and at 12,000 images (dims 256-1,024,
  default blocks); only forced tiny blocks on sets under ~200 images differed. On an AMD EPYC
  (AVX-512, other OpenBLAS kernels) block rows differ from the full product by a few ulp even
  at 64 rows, with identical APs on the test sets. Where bits differ, only images whose
  similarities lie within a few float32 ulp of each other can swap.
* each block is ranked with the official expression itself. numpy sorts every row of a 2-D array
  with the same routine it uses for the full matrix, so each row's order -- ties included -- is
  the official one. Ties are therefore broken however numpy's default sort breaks them, which is
  *not* stable in general: where numpy dispatches to its SIMD sorts (AVX-512 machines), equal
  values in rows of 4 or more come out in an order that depends on the row's content, so neither
  "lower index first" (a stable sort of the negated similarities) nor "higher index first" (a
  stable ascending sort, reversed) reproduces the official numbers when a relevant and an
  irrelevant image tie.
* AP, Recall@k and the interpolated precision-recall curve all come from that one ranking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GPR1200_DOMAINS = ("landmarks", "inat", "sketch", "instre", "products", "faces")
GPR1200_CLASSES, GPR1200_PER_CLASS = 1200, 10
CHUNK_BUDGET_BYTES = 512 * 2**20
MIN_BLOCK_ROWS = 8
# per similarity cell of a block: float32 similarity, int64 rank order, int32 label gathered in
# rank order, bool relevance, plus slack for numpy temporaries
_BYTES_PER_CELL = 24
# recall levels such as 0.3 are not exact binary fractions (0.3 * 10 = 3.0000000000000004)
_LEVEL_TOLERANCE = 1e-9


def gpr_files(folder: Path | str) -> tuple[list[Path], np.ndarray]:
    """Image files and integer categories, ordered as GPR1200 orders them (by category).

    ``folder`` holds the images named ``{category}_{anything}.jpg`` as the official loader
    expects them, or is the unpacked download whose ``images/`` folder holds them. The order is
    the official loader's: a stable sort of the directory listing by category, so within a
    category the files keep the listing's order (the file system's, the same on every read).
    Only near-ties between a relevant and an irrelevant image can depend on it; following it
    keeps every AP equal to the official code's on the same machine."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of GPR1200-layout images")
    files = _images_in(folder)
    if not files and (folder / "images").is_dir():
        folder = folder / "images"
        files = _images_in(folder)
    if not files:
        raise FileNotFoundError(f"no images in {folder}; expected GPR1200 layout "
                                "'{category}_{name}.jpg' (or an images/ folder holding them)")
    cats = []
    for p in files:
        head = p.name.split("_", 1)[0]
        if "_" not in p.name or not head.isdigit():
            raise ValueError(f"{p}: GPR1200 file names start with an integer category and '_' "
                             "(e.g. 17_a3f.jpg); move other files out of the folder")
        cats.append(int(head))
    order = sorted(range(len(files)), key=lambda i: cats[i])  # stable: listing order within
    return [files[i] for i in order], np.asarray([cats[i] for i in order])


def _images_in(folder: Path) -> list[Path]:
    """Image files in ``os.listdir`` order (what the official loader sorts)."""
    return [folder / n for n in os.listdir(folder)
            if n.lower().endswith((".jpg", ".jpeg", ".png")) and (folder / n).is_file()]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        raise ValueError("an embedding holds NaN or infinite values; check the encoder output")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("an embedding is all zeros; cannot rank by cosine similarity")
    return x / norms


def default_chunk(n_images: int, widest_class: int = 0,
                  budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """Query rows per block so that one block's working arrays stay within ``budget_bytes``
    (``widest_class`` > 0 adds the precision-recall grid, 16 bytes per row and class member)."""
    per_row = _BYTES_PER_CELL * n_images + 16 * widest_class
    return int(min(max(1, n_images), max(1, budget_bytes // per_row)))


@dataclass(frozen=True)
class RankingScan:
    """Per-query results of one pass over the official rankings (query order = input order)."""

    aps: np.ndarray  # (n,) float64 average precision, the query in its own ranking
    recall_hits: dict[int, np.ndarray]  # k -> (n,) bool, see ``recall_at_k``
    recall_levels: np.ndarray | None  # (levels,) when the PR curve was asked for
    interpolated_precision: np.ndarray | None  # (n, levels) float64, idem


def _prepare(features: np.ndarray, labels: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The embeddings as given, int32 class codes, and each query's class size.

    The official evaluation ranks by ``features @ features.T`` on what it is handed, so the
    features are neither normalised nor cast here: pass L2-normalised rows for cosine
    similarity (``embed_files`` makes them so once, where embeddings are made)."""
    feats, labels = np.asarray(features), np.asarray(labels)
    if feats.ndim != 2 or len(feats) == 0:
        raise ValueError(f"features must be a non-empty (images, dim) array, got {feats.shape}")
    if not np.issubdtype(feats.dtype, np.floating):
        raise ValueError(f"features must be floating point, got {feats.dtype}")
    if not np.all(np.isfinite(feats)):
        raise ValueError("an embedding holds NaN or infinite values; check the encoder output")
    if labels.shape != (len(feats),):
        raise ValueError(f"labels have shape {labels.shape}; expected ({len(feats)},), one "
                         "label per embedding row")
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1).astype(np.int32)
    return feats, codes, counts[codes]


def _block_similarities(block: np.ndarray, feats: np.ndarray) -> np.ndarray:
    # thin products go to other kernels (gemv for one row) that round differently from the
    # official full product; padding with copies of a row keeps them on the common kernel
    short = MIN_BLOCK_ROWS - len(block)
    if short > 0:
        padded = np.concatenate([block, np.repeat(block[:1], short, axis=0)])
        return (padded @ feats.T)[:len(block)]
    return block @ feats.T


def _official_ranking(sims: np.ndarray) -> np.ndarray:
    """The official expression; per row identical to ranking the whole matrix at once."""
    return np.argsort(sims, axis=1)[:, ::-1]


def _block_hits(order: np.ndarray, codes: np.ndarray, rows: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Relevance in rank order, and for each relevant item: its block row, 0-based rank
    position, and 0-based number among that query's relevant items."""
    rel = codes[order] == codes[rows][:, None]
    row, pos = np.nonzero(rel)  # row-major, so positions ascend within each row
    first = np.searchsorted(row, np.arange(len(rows)))
    return rel, row, pos, np.arange(len(row)) - first[row]


def _block_recall(order: np.ndarray, rel: np.ndarray, rows: np.ndarray,
                  ks: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Per query and k: a relevant image among the k best-ranked images other than the query.
    The k best others always lie within the first k + 1 positions of the full ranking."""
    head = order[:, :max(ks) + 1]
    other = head != rows[:, None]
    rank_among_others = np.cumsum(other, axis=1) - 1
    good = rel[:, :head.shape[1]] & other
    return {k: (good & (rank_among_others < k)).any(axis=1) for k in ks}


def _block_pr(row: np.ndarray, hit_no: np.ndarray, precision: np.ndarray,
              n_pos: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Interpolated precision (best precision at any recall >= level) per query and level."""
    grid = np.zeros((len(n_pos), int(n_pos.max())))
    grid[row, hit_no] = precision  # hit j of a query reaches recall (j + 1) / n_pos
    best_from = np.maximum.accumulate(grid[:, ::-1], axis=1)[:, ::-1]
    first = np.ceil(levels[None, :] * n_pos[:, None] - _LEVEL_TOLERANCE).astype(np.intp) - 1
    first = np.clip(first, 0, n_pos[:, None] - 1)
    return np.take_along_axis(best_from, first, axis=1)


def _check_scan_args(ks: tuple[int, ...], pr_levels: int | None, chunk: int | None) -> None:
    if any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"recall ks must be positive integers, got {ks}")
    if pr_levels is not None and pr_levels < 2:
        raise ValueError(f"pr_levels must be >= 2 (0 and 1 at least), got {pr_levels}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of query rows, got {chunk}")


def scan_rankings(features: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5),
                  pr_levels: int | None = None, chunk: int | None = None) -> RankingScan:
    """One chunked pass over the official rankings: per-query AP, Recall@k hits for each k in
    ``ks`` and, if ``pr_levels`` is given, interpolated precision at that many recall levels
    evenly spaced over [0, 1]. ``chunk`` = query rows per block (default: ``default_chunk``)."""
    _check_scan_args(ks, pr_levels, chunk)
    feats, codes, n_pos = _prepare(features, labels)
    n = len(feats)
    levels = None if pr_levels is None else np.linspace(0.0, 1.0, pr_levels)
    chunk = chunk or default_chunk(n, 0 if levels is None else int(n_pos.max()))
    aps = np.empty(n)
    hits = {k: np.empty(n, dtype=bool) for k in ks}
    pr = None if levels is None else np.empty((n, len(levels)))
    members = _class_members(codes)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = _block_similarities(feats[start:stop], feats)
        if members.shape[1] <= COUNT_MAX_CLASS:
            fast, tied = _counted_positions(sims, codes, np.arange(start, stop), members, ks)
            parts = [fast]
        else:  # big classes: sorting each row is cheaper than counting per relevant image
            tied, parts = np.arange(stop - start), []
        if len(tied):  # a relevant image ties an irrelevant one: the official sort decides
            rows = start + tied
            order = _official_ranking(sims[tied])
            rel, row, pos, hit_no = _block_hits(order, codes, rows)
            parts.append((rows, row, pos, hit_no,
                          _block_recall(order, rel, rows, ks) if ks else {}))
        for rows, row, pos, hit_no, recall in parts:
            if not len(rows):
                continue
            precision = (hit_no + 1) / (pos + 1.0)
            aps[rows] = np.bincount(row, weights=precision, minlength=len(rows)) / n_pos[rows]
            for k, got in recall.items():
                hits[k][rows] = got
            if pr is not None:
                pr[rows] = _block_pr(row, hit_no, precision, n_pos[rows], levels)
    return RankingScan(aps, hits, levels, pr)


def _class_members(codes: np.ndarray) -> np.ndarray:
    """(classes, widest class) image indices of each class, ascending, padded with -1."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full((len(counts), int(counts.max())), -1, dtype=np.int64)
    col = np.arange(len(codes)) - np.repeat(starts, counts)
    out[codes[order], col] = order
    return out


COUNT_CELLS = 1 << 22  # comparisons per sub-block of _counted_positions (4 MB of booleans)
# Counting costs ~2 comparisons per (image, relevant image), sorting ~log2(images) steps per
# image: measured on 12,000-image rows, counting wins up to ~20 relevant images per class
# (GPR1200 has 10), and sorting beyond.
COUNT_MAX_CLASS = 16


def _counted_positions(sims: np.ndarray, codes: np.ndarray, rows: np.ndarray,
                       members: np.ndarray, ks: tuple[int, ...]):
    """Rank positions of each query's relevant images without sorting the row: the relevant
    image with the j-th highest similarity sits at (images scoring strictly higher) + (j minus
    the relevant images scoring strictly higher), which is its position in the official
    ranking whatever order the sort gives tied relevant images -- AP, Recall@k and the PR
    curve do not depend on that order. Where an irrelevant image ties a relevant one the
    official order matters: those rows are returned (block indices) for the official sort.
    About 2 comparisons per (image, relevant image) instead of a full argsort per row."""
    mem = members[codes[rows]]  # (B, m)
    valid = mem >= 0
    psim = np.where(valid, np.take_along_axis(sims, np.where(valid, mem, 0), axis=1), -np.inf)
    by_sim = np.argsort(-psim, axis=1, kind="stable")
    psim = np.take_along_axis(psim, by_sim, axis=1)  # descending; padding (-inf) last
    mem = np.take_along_axis(mem, by_sim, axis=1)
    valid = np.take_along_axis(valid, by_sim, axis=1)
    m = psim.shape[1]
    step = max(1, COUNT_CELLS // (m * sims.shape[1]))
    higher = np.empty(psim.shape, dtype=np.uint32)
    equal = np.empty(psim.shape, dtype=np.uint32)
    flags = np.empty((step, m, sims.shape[1]), dtype=bool)  # reused: no page faults per step
    for a in range(0, len(rows), step):
        s, p = sims[a:a + step, None, :], psim[a:a + step, :, None]
        out = flags[:len(s)]
        # a uint8 sum is ~2.5x faster than count_nonzero along an axis
        np.greater(s, p, out=out)
        out.view(np.uint8).sum(axis=2, dtype=np.uint32, out=higher[a:a + step])
        np.equal(s, p, out=out)
        out.view(np.uint8).sum(axis=2, dtype=np.uint32, out=equal[a:a + step])
    higher, equal = higher.astype(np.int64), equal.astype(np.int64)
    same = np.count_nonzero(psim[:, :, None] == psim[:, None, :], axis=2)  # among relevant
    rel_higher = np.count_nonzero(psim[:, None, :] > psim[:, :, None], axis=2)
    tied = ((equal != same) & valid).any(axis=1)
    keep = ~tied
    j = np.arange(m)[None, :]
    pos = higher + j - rel_higher
    b_row, hit_no = np.nonzero(valid & keep[:, None])  # row-major: positions ascend per row
    local = np.cumsum(keep) - 1  # block row -> row among the kept ones
    fast_rows = rows[keep]
    recall = {}
    if ks:
        is_query = mem == rows[:, None]
        q_pos = np.where(is_query, pos, 0).sum(axis=1)
        others = pos - (q_pos[:, None] < pos)  # rank among the images other than the query
        for k in ks:
            recall[k] = ((others < k) & valid & ~is_query).any(axis=1)[keep]
    fast = (fast_rows, local[b_row], pos[b_row, hit_no], hit_no, recall)
    return fast, np.flatnonzero(tied)


def average_precisions(features: np.ndarray, labels: np.ndarray,
                       chunk: int | None = None) -> np.ndarray:
    """Per-query AP over the full official ranking (query included), float64."""
    return scan_rankings(features, labels, ks=(), chunk=chunk).aps


def recall_at_k(features: np.ndarray, labels: np.ndarray, k: int,
                chunk: int | None = None) -> float:
    """Share of queries with a same-class image among the k best-ranked *other* images.

    Not part of the official evaluation: the official ranking is taken with the query removed
    from it (ties keep the official order), so a query does not count as its own neighbour; a
    query whose class has no other image is a miss."""
    return float(scan_rankings(features, labels, ks=(k,), chunk=chunk).recall_hits[k].mean())


def precision_recall_curve(features: np.ndarray, labels: np.ndarray, levels: int = 21,
                           chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Recall levels evenly spaced over [0, 1] and the interpolated precision at each, averaged
    over queries. Per query, from the official ranking (the query included, as for AP), the
    interpolated precision at level r is the best precision reached at any recall >= r."""
    scan = scan_rankings(features, labels, ks=(), pr_levels=levels, chunk=chunk)
    return scan.recall_levels, scan.interpolated_precision.mean(axis=0)


def gpr1200_domains(labels: np.ndarray) -> dict[str, np.ndarray] | None:
    """Query masks of GPR1200's six domains, or None unless ``labels`` are the real benchmark's
    categories (exactly 0..1199). The domain comes from the category itself, 200 categories a
    domain in ``GPR1200_DOMAINS`` order (the official code's blocks of 2,000 rows of its
    category-sorted list), so rows may come in any order."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return None
    if not np.array_equal(np.unique(labels), np.arange(GPR1200_CLASSES)):
        return None
    domain = labels // (GPR1200_CLASSES // len(GPR1200_DOMAINS))
    return {name: domain == i for i, name in enumerate(GPR1200_DOMAINS)}


def _partition_maps(aps: np.ndarray, partitions: dict[str, np.ndarray]) -> dict[str, float]:
    out = {}
    for part, mask in partitions.items():
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != aps.shape:
            raise ValueError(f"partition {part!r}: expected a boolean mask of shape {aps.shape}, "
                             f"got {mask.dtype} {mask.shape}")
        if mask.any():
            out[f"gpr_map_{part}"] = float(aps[mask].mean())
    return out


def retrieval_metrics(features: np.ndarray, labels: np.ndarray,
                      partitions: dict[str, np.ndarray] | None = None,
                      chunk: int | None = None) -> dict[str, float]:
    """``gpr_map``, ``recall_at_1``, ``recall_at_5`` from one pass; ``gpr_map_<part>`` over the
    queries of each boolean partition mask (empty ones left out); and, when ``labels`` has the
    real GPR1200 layout, ``gpr_map_<domain>`` for each of ``GPR1200_DOMAINS``."""
    scan = scan_rankings(features, labels, ks=(1, 5), chunk=chunk)
    domains = gpr1200_domains(labels) or {}
    clash = sorted(set(domains) & set(partitions or {}))
    if clash:
        raise ValueError(f"partitions {clash} clash with the GPR1200 domain names; rename them")
    return {"gpr_map": float(scan.aps.mean()),
            "recall_at_1": float(scan.recall_hits[1].mean()),
            "recall_at_5": float(scan.recall_hits[5].mean()),
            **_partition_maps(scan.aps, domains),
            **_partition_maps(scan.aps, partitions or {})}
