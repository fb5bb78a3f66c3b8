"""average_precisions (chunked, vectorised) vs a per-query loop, on GPR1200-size data.

    python benchmarks/bench_retrieval.py [--images 12000] [--dim 512] [--loop-queries N]

Embeddings: class centre + Gaussian noise, L2-normalised float32, classes of 10 (1,200 classes at
the default size), noisy enough that mAP is well below 1. The vectorised function runs first, so
the process peak RSS read right after it is its own peak (the data included). The loop then does
what the official evaluation does, one query at a time: similarities to all images,
``np.argsort(...)[::-1]``, AP by a loop over the relevant positions. ``--loop-queries N`` runs the
loop on N queries spread evenly over the set and extrapolates its time per query to all queries
(said so in the output); the APs are compared on those queries. Each side is timed once.

The loop's one-query products go through BLAS gemv, which rounds some similarities differently
in the last bit from the one-shot ``features @ features.T`` of the official code; near-ties can
then swap, moving that query's AP by 1e-6 to 1e-3 depending on the rank where it happens (at
12,000 x 512: 32 of 12,000 queries, each swap within one float32 ulp). The APs are therefore
also compared (untimed) with rankings of the rows of that one-shot product, i.e. with the
official similarities exactly.
Targets: speed-up >= 3x, max |AP difference| <= 1e-6, peak RSS <= 2 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
from ratio import ratio_result, write_result


def make_embeddings(images: int, dim: int, per_class: int, noise: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(images // per_class), per_class)
    centres = rng.normal(size=(labels.max() + 1, dim)).astype(np.float32)
    feats = centres[labels] + noise * rng.normal(size=(len(labels), dim)).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True), labels


def ap_of_ranking(ranking: np.ndarray, labels: np.ndarray, q: int) -> float:
    positions = np.flatnonzero(labels[ranking] == labels[q])
    return sum((seen + 1) / (pos + 1.0) for seen, pos in enumerate(positions)) / len(positions)


def per_query_aps(unit: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The straightforward evaluation: one query at a time, ranked as the official code ranks."""
    return np.array([ap_of_ranking(np.argsort(unit @ unit[q])[::-1], labels, q)
                     for q in queries])


def official_product_aps(unit: np.ndarray, labels: np.ndarray, queries: np.ndarray
                         ) -> np.ndarray:
    """The same, on rows of the official one-shot similarity matrix."""
    sims = unit @ unit.T
    return np.array([ap_of_ranking(np.argsort(sims[q])[::-1], labels, q) for q in queries])


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--noise", type=float, default=3.0, help="noise scale against unit centres")
    ap.add_argument("--loop-queries", type=int, help="time the loop on this many queries only")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls of each side (median)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()

    from mofi_core.evaluate.retrieval import average_precisions, default_chunk, l2_normalise

    feats, labels = make_embeddings(args.images, args.dim, args.per_class, args.noise)
    n = len(labels)
    rss_before = peak_rss_gb()
    vec_times, loop_times = [], []
    start = time.perf_counter()
    aps = average_precisions(feats, labels)
    vec_times.append(time.perf_counter() - start)
    rss_after = peak_rss_gb()

    queries = np.arange(n)
    if args.loop_queries and args.loop_queries < n:
        queries = np.linspace(0, n - 1, args.loop_queries).round().astype(int)
    unit = l2_normalise(feats.astype(np.float32))  # the library's own preprocessing
    for i in range(args.repeats):  # alternating, as the ratio benchmarks do
        start = time.perf_counter()
        loop_aps = per_query_aps(unit, labels, queries)
        loop_times.append(time.perf_counter() - start)
        if i + 1 < args.repeats:
            start = time.perf_counter()
            average_precisions(feats, labels)
            vec_times.append(time.perf_counter() - start)
    vec_s, loop_s = statistics.median(vec_times), statistics.median(loop_times)
    loop_all_s = loop_s / len(queries) * n

    print(f"images {n}, dim {args.dim}, classes {labels.max() + 1}, cores {os.cpu_count()}, "
          f"block {default_chunk(n)} query rows; mAP {aps.mean():.4f}")
    print(f"vectorised average_precisions: {vec_s:8.2f} s")
    if len(queries) == n:
        print(f"per-query loop:                {loop_s:8.2f} s")
    else:
        print(f"per-query loop:                {loop_all_s:8.2f} s for all {n} queries, "
              f"extrapolated from {loop_s:.2f} s on {len(queries)} queries")
    print(f"speed-up: {loop_all_s / vec_s:.1f}x (target >= 3)")
    diff = np.abs(aps[queries] - loop_aps)
    print(f"max |AP difference| vs the loop over {len(queries)} queries: {diff.max():.2e} "
          f"(target <= 1e-6); queries differing: {np.count_nonzero(diff)}; |mAP difference|: "
          f"{abs(aps[queries].mean() - loop_aps.mean()):.1e}")
    loop_diff = float(diff.max())
    diff = np.abs(aps[queries] - official_product_aps(unit, labels, queries))
    print(f"max |AP difference| vs rankings of the official one-shot product: {diff.max():.2e}; "
          f"queries differing: {np.count_nonzero(diff)}")
    print(f"peak RSS after the vectorised call: {rss_after:.2f} GB (before it: "
          f"{rss_before:.2f} GB; target <= 2)")
    # throughput in queries/s, so that the ratio is the speed-up
    write_result(args.json, ratio_result(
        "retrieval", "queries/s", n / vec_s, n / loop_all_s, 3.0, args.repeats,
        "per-query loop: similarities, argsort, AP (official protocol)", images=n,
        dim=args.dim, loop_queries=len(queries), map=float(aps.mean()),
        max_ap_diff_official=float(diff.max()), max_ap_diff_loop=loop_diff,
        ap_tolerance=1e-6, peak_rss_gb=rss_after))


if __name__ == "__main__":
    main()
