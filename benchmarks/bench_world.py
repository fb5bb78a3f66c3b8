"""Demo-world generation: throughput and peak memory, against a bare render loop.

    python benchmarks/bench_world.py                   # 10k images
    python benchmarks/bench_world.py --sizes 10000 1000000

For each size, ``generate_world`` runs in a fresh subprocess (so peak RSS is its own and its
workers'), writing shards, parquets and truth to a temporary folder. The raw baseline, measured in
the same run, is a bare single-process loop that renders and JPEG-encodes images and writes
nothing: the ratio says what sharding, metadata and the process pool cost or gain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ratio import ratio_result, write_result

ENTITIES = 200

CHILD = f"""
import json, resource, sys, time
from pathlib import Path
from mofi_core.config.corpus import CorpusConfig, BenchmarkConfig
from mofi_core.demo.world import generate_world
n, out = int(sys.argv[1]), Path(sys.argv[2])
cfg = CorpusConfig(num_entities={ENTITIES}, images_per_entity=n // {ENTITIES},
                   benchmark=BenchmarkConfig(seen_classes=1, unseen_classes=0, images_per_class=2,
                                             labelled_train=0, labelled_val=0, labelled_test=0))
t = time.perf_counter()
stats = generate_world(cfg, out / "corpus", out / "truth", out / "bench")
secs = time.perf_counter() - t
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({{"images": stats.samples, "seconds": secs, "rss_main_mb": own / 1024,
                  "rss_worker_mb": workers / 1024}}))
"""


def bare_loop(images: int) -> float:
    """Images/s of render + JPEG encode in one process, nothing written."""
    import numpy as np

    from mofi_core.demo.entities import make_entities
    from mofi_core.demo.render import draw_object, render

    rng = np.random.default_rng(0)
    entities = make_entities(ENTITIES, rng)
    objects = [(e, draw_object(e)) for e in entities]
    start = time.perf_counter()
    for i in range(images):
        render([objects[i % len(objects)]], 64, rng)
    return images / (time.perf_counter() - start)


def generate(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-world-") as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n), tmp], capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    ap.add_argument("--repeats", type=int, default=5, help="bare-loop repeats (median)")
    ap.add_argument("--stage-repeats", type=int, default=1,
                    help="generations per size (median; alternated with the bare loop)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    bares = [bare_loop(2000) for _ in range(args.repeats)]
    rows = []
    for n in args.sizes:
        runs = []
        for _ in range(args.stage_repeats):
            runs.append(generate(n))
            if args.stage_repeats > 1:
                bares.append(bare_loop(2000))
        r = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]  # the median run
        r["images_per_s"] = r["images"] / r["seconds"]
        r["repeats"] = len(runs)
        rows.append(r)
    bare = statistics.median(bares)
    for r in rows:
        r["ratio_vs_bare_loop"] = r["images_per_s"] / bare
    print(f"bare render+encode loop (1 process, median of {args.repeats}): {bare:,.0f} images/s")
    print(f"{'images':>10} {'seconds':>9} {'images/s':>9} {'ratio':>6} {'RSS main':>9} "
          f"{'RSS worker':>10}")
    for r in rows:
        print(f"{r['images']:>10,} {r['seconds']:>9.1f} {r['images_per_s']:>9,.0f} "
              f"{r['ratio_vs_bare_loop']:>6.2f} {r['rss_main_mb']:>7.0f}MB "
              f"{r['rss_worker_mb']:>8.0f}MB")
    last = rows[-1]
    write_result(args.json, ratio_result(
        "world", "images/s", last["images_per_s"], bare, 0.0, last["repeats"],
        "bare render + JPEG encode loop in 1 process, nothing written", images=last["images"],
        runs=rows, note="no target: the pool of workers may beat the 1-process loop"))


if __name__ == "__main__":
    main()
