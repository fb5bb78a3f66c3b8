"""ingest and ner with 2 worker processes vs 1 (target >= 1.5x), and ingest vs a bare loop.

    python benchmarks/bench_parallel.py [--samples 50000] [--repeats 3]

One demo world is generated into a temporary folder; every measurement runs the stage function
as the stage command does (worker start-up, spaCy loading in each worker, the final merge pass
all included) on the same shards, alternating the variants so that load on a shared host hits
them alike. The bare ingest baseline reads each tar and decodes each image with PIL in one
process, writing nothing. Process count is capped by the cores: on a 1-core host the 2-process
numbers cannot show a gain. Worker start-up is a fixed cost (importing spaCy pulls in torch
through thinc: ~3 s per process here), so small corpora understate the steady-state speed-up.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from ratio import kb_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from PIL import Image

    from mofi_core.config.corpus import BenchmarkConfig, CorpusConfig
    from mofi_core.config.ingest import IngestConfig
    from mofi_core.config.ner import NerConfig
    from mofi_core.curate.ingest import ingest
    from mofi_core.curate.ner import run_ner
    from mofi_core.demo.world import generate_world
    from mofi_core.io.sources import expand_sources

    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        root = Path(tmp)
        generate_world(CorpusConfig(num_entities=200, images_per_entity=args.samples // 200,
                                    benchmark=BenchmarkConfig(
                                        seen_classes=1, unseen_classes=0, images_per_class=2,
                                        labelled_train=0, labelled_val=0, labelled_test=0)),
                       root / "corpus", root / "truth", root / "bench")
        kb_folder(root)
        sources = expand_sources(str(root / "corpus" / "shards"), root)
        n = args.samples

        def bare_ingest() -> float:
            start = time.perf_counter()
            for src in sources:
                with tarfile.open(src) as tar:
                    for m in tar:
                        if m.name.endswith(".jpg"):
                            Image.open(io.BytesIO(tar.extractfile(m).read())).load()
            return n / (time.perf_counter() - start)

        def ingest_with(workers: int):
            def run() -> float:
                out = root / f"ingest{workers}"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                ingest(sources, out, IngestConfig(workers=workers))
                return n / (time.perf_counter() - start)
            return run

        def ner_with(workers: int):
            def run() -> float:
                out = root / f"ner{workers}"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                run_ner(root / "ingest1", root / "kb", out,
                        NerConfig(workers=workers))
                return n / (time.perf_counter() - start)
            return run

        variants = {"bare tar+decode loop": bare_ingest, "ingest 1 process": ingest_with(1),
                    "ingest 2 processes": ingest_with(2), "ner 1 process": ner_with(1),
                    "ner 2 processes": ner_with(2)}
        # no warm-up round (the world was just written, so it is in the page cache); the
        # variants run in this order each round, ingest with 1 process first: it is ner's input
        results: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                results[name].append(fn())
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"samples: {n}; cores: {os.cpu_count()}; median of {args.repeats}, interleaved")
    for k, v in med.items():
        print(f"{k:<22} {v:9,.0f} samples/s")
    bare = med["bare tar+decode loop"]
    print(f"ingest (1 process) / bare loop: {med['ingest 1 process'] / bare:.2f}")
    for stage in ("ingest", "ner"):
        r = med[f"{stage} 2 processes"] / med[f"{stage} 1 process"]
        print(f"{stage}: 2 processes / 1 process = {r:.2f} (target >= 1.5)")


if __name__ == "__main__":
    main()
