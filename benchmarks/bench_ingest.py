"""ingest stage vs a bare tar + decode loop over the same shards, in one run.

    python benchmarks/bench_ingest.py [--samples 6000] [--repeats 5] [--json out.json]

The bare loop reads every member of every shard with ``tarfile`` and fully decodes each image
(Pillow ``load()``) and each alt-text (UTF-8): the least work any ingest must do. The stage
(``ingest`` with one worker, like the loop) also checks and normalises every sample, writes clean
shards, per-shard parquets, the manifest and the rejects table, and flags duplicates. The
ratio is the stage's samples/s over the loop's: what the checks and the outputs cost.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from ratio import corpus_world, interleaved_medians, ratio_result, stage_parser, write_result


def bare_loop(shards: list[Path]) -> int:
    from PIL import Image

    n = 0
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if member.name.endswith(".jpg"):
                    Image.open(io.BytesIO(data)).load()
                    n += 1
                elif member.name.endswith(".txt"):
                    data.decode("utf-8")
    return n


def main() -> None:
    ap = stage_parser(__doc__, samples=6000)
    args = ap.parse_args()

    from mofi_core.config.ingest import IngestConfig
    from mofi_core.curate.ingest import ingest
    from mofi_core.io.shards import list_shards

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = corpus_world(Path(tmp), args.samples)
        shards = list_shards(root / "corpus" / "shards")
        n = bare_loop(shards)
        cfg = IngestConfig(workers=1)

        def bare() -> float:
            start = time.perf_counter()
            bare_loop(shards)
            return n / (time.perf_counter() - start)

        def stage() -> float:
            shutil.rmtree(root / "ingest", ignore_errors=True)  # no resume: all the work
            start = time.perf_counter()
            ingest([str(s) for s in shards], root / "ingest", cfg)
            return n / (time.perf_counter() - start)

        mb, ms = interleaved_medians(bare, stage, args.repeats)
    print(f"samples: {n} in {len(shards)} shards; median of {args.repeats}; 1 process each")
    print(f"bare tar + decode loop: {mb:8,.0f} samples/s")
    print(f"ingest stage:           {ms:8,.0f} samples/s -> ratio {ms / mb:.2f}")
    write_result(args.json, ratio_result("ingest", "samples/s", ms, mb, 0.0, args.repeats,
                                         "bare tarfile read + full image and text decode",
                                         samples=n, note="no target in the issue"))


if __name__ == "__main__":
    main()
