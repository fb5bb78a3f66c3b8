"""GPR1200-size retrieval evaluation: 12,000 L2-normalised 512-d embeddings, 1,200 classes of 10,
every image a query against all others (the evaluate stage's own function).

    python benchmarks/bench_retrieval_size.py [--images 12000] [--out retrieval.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from mofi_core.evaluate.retrieval import l2_normalise, retrieval_metrics

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(args.images // args.per_class), args.per_class)
    centres = rng.normal(size=(labels.max() + 1, args.dim)).astype(np.float32)
    feats = l2_normalise(centres[labels] + rng.normal(size=(len(labels), args.dim)
                                                       ).astype(np.float32) * 2.0)
    start = time.perf_counter()
    metrics = retrieval_metrics(feats, labels)
    secs = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    row = {"images": len(labels), "dim": args.dim, "seconds": secs, "peak_rss_gb": rss,
           **{k: float(v) for k, v in metrics.items() if np.isscalar(v)}}
    print(json.dumps(row, indent=2))
    if args.out:
        args.out.write_text(json.dumps(row, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
