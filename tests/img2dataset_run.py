"""The real img2dataset, run on images served from 127.0.0.1: its output is the tool's own format
(webdataset tars + a parquet and a stats file per shard), not an imitation. Used by the ingest test
and the bring-your-own-data walkthrough."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mofi_core.io.shards import iter_samples
from tests.conftest import ROOT

IMG2DATASET = ROOT / ".tools" / "img2dataset" / "bin" / "img2dataset"
# quiet and offline: albumentations asks PyPI for a newer version unless told not to
QUIET = {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "DO_NOT_TRACK": "1"}


@contextmanager
def serve(folder: Path):
    """A static HTTP server for ``folder`` on 127.0.0.1 (a free port), stopped on exit."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def corpus_as_urls(shards: list[Path], www: Path, limit: int) -> list[dict]:
    """Up to ``limit`` images of the given shards written as files to ``www``, and their
    alt-texts: ``[{"file", "caption"}]``."""
    www.mkdir(parents=True, exist_ok=True)
    rows = []
    for shard in shards:
        for s in iter_samples(shard):
            if len(rows) == limit:
                return rows
            name = f"{s['__key__']}.jpg"
            (www / name).write_bytes(s["jpg"])
            rows.append({"file": name, "caption": s.get("txt", b"").decode("utf-8")})
    return rows


def run_img2dataset(rows: list[dict], base_url: str, out: Path, workdir: Path,
                    per_shard: int = 50, broken: tuple[str, ...] = ()) -> Path:
    """The tool on a URL + caption parquet (``broken``: file names that 404), webdataset out."""
    if not IMG2DATASET.is_file():
        raise RuntimeError(f"{IMG2DATASET} is missing: `make setup` installs img2dataset in its "
                           "own venv")
    table = pa.Table.from_pylist(
        [{"url": f"{base_url}/{r['file']}", "caption": r["caption"]} for r in rows]
        + [{"url": f"{base_url}/{b}", "caption": "never served"} for b in broken])
    urls = workdir / "urls.parquet"
    pq.write_table(table, urls)
    cmd = [str(IMG2DATASET), "--url_list", str(urls), "--input_format", "parquet",
           "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
           "--output_folder", str(out), "--processes_count", "1", "--thread_count", "4",
           "--number_sample_per_shard", str(per_shard), "--resize_mode", "no",
           "--retries", "0", "--timeout", "10", "--enable_wandb", "False"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=workdir,
                          env={**os.environ, **QUIET})
    if done.returncode != 0:
        raise RuntimeError(f"img2dataset failed ({done.returncode}): {done.stderr[-3000:]}")
    return out
