"""Time and peak memory of ingest, ner, score and build as the corpus grows.

    python benchmarks/bench_curate_scaling.py                      # 10k and 100k images
    python benchmarks/bench_curate_scaling.py --sizes 10000 1000000 --workdir /big/disk

For each size a demo world is generated once, then each stage runs in a fresh subprocess on the
previous stage's output, exactly as its command runs it (default params, a random-weight
``mofi-tiny`` CLIP as the scorer: speed and memory do not depend on the weights). Reported per
stage and size: seconds, samples/s, peak RSS of the stage process and of its largest worker.
Target: peak memory at the largest size <= 1.2x the smallest (streaming, no corpus-sized lists).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("ingest", "ner", "score", "build")

CHILD = """
import json, resource, sys, time
from pathlib import Path
from mofi_core.config import BuildConfig, IngestConfig, NerConfig, ScoreConfig
stage, root = sys.argv[1], Path(sys.argv[2])
t = time.perf_counter()
if stage == "ingest":
    from mofi_core.curate.ingest import ingest
    from mofi_core.io.sources import expand_sources
    ingest(expand_sources(str(root / "corpus" / "shards"), root), root / "ingest", IngestConfig())
elif stage == "ner":
    from mofi_core.curate.ner import run_ner
    run_ner(root / "ingest", root / "corpus" / "kb.parquet", root / "ner", NerConfig())
elif stage == "score":
    from mofi_core.curate.score import score
    score(root / "ingest", root / "ner", root / "corpus" / "kb.parquet", root / "baseline",
          root / "score", ScoreConfig())
elif stage == "build":
    from mofi_core.curate.build import build
    build(root / "ingest", root / "score", root / "i2e", BuildConfig(threshold=-1.0))
secs = time.perf_counter() - t
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"seconds": secs, "rss_main_mb": own, "rss_worker_mb": kids}))
"""

WORLD = """
import sys
from pathlib import Path
from mofi_core.config import BenchmarkConfig, CorpusConfig
from mofi_core.demo.world import generate_world
from mofi_core.models.artifact import build_model, default_meta, save_model
from mofi_core.models.factory import arch_config
n, root = int(sys.argv[1]), Path(sys.argv[2])
generate_world(CorpusConfig(num_entities=200, images_per_entity=n // 200,
               benchmark=BenchmarkConfig(seen_classes=1, unseen_classes=0, images_per_class=2,
                                         labelled_train=0, labelled_val=0, labelled_test=0)),
               root / "corpus", root / "truth", root / "bench")
meta = default_meta("clip", "mofi-tiny", arch_config("mofi-tiny"), "clip")
save_model(root / "baseline", build_model(meta).eval(), meta)
"""


def _py(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"benchmark child failed ({args}):\n{out.stderr[-3000:]}")
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workdir", type=Path, default=None, help="where worlds are generated")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                    help="a prefix of the chain (each stage reads the previous one's output)")
    args = ap.parse_args()
    stages = [s for s in STAGES if s in args.stages]
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-scale-{n}-", dir=args.workdir) as tmp:
            t = time.perf_counter()
            _py(WORLD, str(n), tmp)
            print(f"{n:,} images: world generated in {time.perf_counter() - t:.0f} s", flush=True)
            for stage in stages:
                r = json.loads(_py(CHILD, stage, tmp).strip().splitlines()[-1])
                r.update(stage=stage, images=n, per_s=n / r["seconds"])
                rows.append(r)
                print(f"  {stage:<7} {r['seconds']:8.1f} s {r['per_s']:8,.0f}/s "
                      f"RSS {r['rss_main_mb']:6.0f} MB main, {r['rss_worker_mb']:6.0f} MB worker",
                      flush=True)
    small, large = min(args.sizes), max(args.sizes)
    print(f"\npeak memory {large:,} vs {small:,} images (target <= 1.2x):")
    for stage in stages:
        a = next(r for r in rows if r["stage"] == stage and r["images"] == small)
        b = next(r for r in rows if r["stage"] == stage and r["images"] == large)
        main_x = b["rss_main_mb"] / a["rss_main_mb"]
        work_x = b["rss_worker_mb"] / a["rss_worker_mb"] if a["rss_worker_mb"] else 1.0
        time_x = b["seconds"] / a["seconds"]
        print(f"  {stage:<7} main {main_x:5.2f}x  worker {work_x:5.2f}x  "
              f"time {time_x:6.1f}x for {large / small:.0f}x the images")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
