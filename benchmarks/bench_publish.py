"""Publishing an output to the storage root vs a sequential 3-requests-per-file upload, in one run.

    python benchmarks/bench_publish.py [--files 1000] [--size 2048] [--repeats 5] [--json out.json]

A SeaweedFS S3 server (``weed mini``, as in the tests) runs on loopback. Each round publishes
the same folder of small files to a fresh prefix both ways. The baseline is the previous
publishing scheme: for each file in turn, a PUT to a temporary key, a copy onto the final key
and a delete of the temporary key. The stage (``Storage.publish``) lists the prefix once, PUTs
every file (one request each, ``MOFI_S3_CONCURRENCY`` threads, default 16), then writes the
manifest. The ratio is the stage's files/s over the baseline's. Also printed: a re-publish of
the unchanged folder, which verifies every object from one listing and uploads nothing. The
server shares the machine's cores with the client, so a bigger machine (or a remote store,
where each request waits on the network) shows a larger gain.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ratio import interleaved_medians, ratio_result, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.servers starts the S3 server


def sequential_three_requests(folder: Path, url: str) -> None:
    """The old publish: temporary key, copy, delete, one file after the other."""
    from mofi_core.io import s3

    c = s3.client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        loc = s3.S3Url.parse(f"{url}/{path.relative_to(folder).as_posix()}")
        tmp = f"{loc.key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(path, "rb") as body:
            c.put_object(Bucket=loc.bucket, Key=tmp, Body=body)
        c.copy_object(Bucket=loc.bucket, Key=loc.key,
                      CopySource={"Bucket": loc.bucket, "Key": tmp})
        c.delete_object(Bucket=loc.bucket, Key=tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2048, help="bytes per file")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()

    from mofi_core.io import s3
    from mofi_core.io.storage import Storage
    from tests.servers import SeaweedS3

    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        work = Path(tmp)
        out = work / "ws" / "data" / "out"
        for i in range(args.files):
            path = out / f"part-{i // 100:02d}" / f"{i:05d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(args.size))
        n = args.files
        with SeaweedS3(work / "seaweed") as server:
            os.environ.update(server.env())
            bucket = f"s3://bench-{uuid.uuid4().hex[:8]}"
            s3.create_bucket(bucket)
            store = Storage(f"{bucket}/stage", work / "ws")

            def bare() -> float:
                start = time.perf_counter()
                sequential_three_requests(out, f"{bucket}/bare-{uuid.uuid4().hex[:8]}")
                return n / (time.perf_counter() - start)

            def stage() -> float:
                store.root = f"{bucket}/stage-{uuid.uuid4().hex[:8]}"  # a fresh publication
                start = time.perf_counter()
                stats = store.publish("data/out")
                assert stats.transferred == n, stats
                return n / (time.perf_counter() - start)

            mb, ms = interleaved_medians(bare, stage, args.repeats)
            start = time.perf_counter()
            again = store.publish("data/out")
            verify = n / (time.perf_counter() - start)
            assert again.transferred == 0 and again.unchanged == n, again
    width = s3.concurrency()
    print(f"files: {n} x {args.size} B; median of {args.repeats}, interleaved; "
          f"{os.cpu_count()} cores shared with the S3 server")
    print(f"sequential temp key + copy + delete: {mb:8,.0f} files/s")
    print(f"publish ({width} threads, one PUT):  {ms:8,.0f} files/s -> ratio {ms / mb:.2f}")
    print(f"re-publish, unchanged (one listing): {verify:8,.0f} files/s")
    write_result(args.json, ratio_result(
        "publish", "files/s", ms, mb, 0.0, args.repeats,
        "sequential PUT to a temporary key + copy + delete per file (the previous scheme)",
        files=n, file_bytes=args.size, concurrency=width, republish_unchanged_per_s=verify,
        note="no target in the issue"))


if __name__ == "__main__":
    main()
