"""ingest inputs (folder, glob, brace, manifest, URLs), shard-level resume and worker processes."""

import functools
import hashlib
import http.server
import io
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mofi_core.config import IngestConfig
from mofi_core.curate.ingest import ingest
from mofi_core.io.shards import ShardWriter
from mofi_core.io.sources import SourceError, expand_sources


def _jpg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (shade, 40, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def _shards(folder: Path, n: int = 3, per: int = 4) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        with ShardWriter(folder / f"{i:05d}.tar") as w:
            for j in range(per):
                w.write(f"s{i}-{j}", {"jpg": _jpg(10 * i + j), "txt": f"photo {i} {j}"})
        out.append(folder / f"{i:05d}.tar")
    return out


def _tree_digest(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_folder_glob_brace_and_manifest_name_the_same_shards(tmp_path):
    shards = [str(p) for p in _shards(tmp_path / "in")]
    assert expand_sources("in", tmp_path) == shards
    assert expand_sources("in/*.tar", tmp_path) == shards
    assert expand_sources("in/{00000..00002}.tar", tmp_path) == shards
    (tmp_path / "in" / "list.txt").write_text("# my shards\n00000.tar\n\n00001.tar  # second\n"
                                              f"{shards[2]}\n")
    assert expand_sources("in/list.txt", tmp_path) == shards
    assert expand_sources("@in/list.txt", tmp_path) == shards
    assert expand_sources("file:///x/a.tar", tmp_path) == ["file:///x/a.tar"]


@pytest.mark.parametrize("spec,match", [
    ("gs://bucket/a.tar", r"gs:// is not supported"), ("in/*.zip", "matches no file"),
    ("   ", "empty")])
def test_bad_input_specs_are_clear_errors(tmp_path, spec, match):
    _shards(tmp_path / "in")
    with pytest.raises(SourceError, match=match):
        expand_sources(spec, tmp_path)


def test_a_missing_shard_in_a_manifest_is_a_listed_rejection(tmp_path):
    shards = _shards(tmp_path / "in", n=2)
    sources = [str(shards[0]), str(tmp_path / "in" / "gone.tar"), str(shards[1])]
    result = ingest(sources, tmp_path / "out", IngestConfig(max_reject_fraction=0.5))
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert [(r["key"], r["shard"]) for r in rejects] == [("*", "gone.tar")]
    assert "does not exist" in rejects[0]["reason"]
    assert result.kept == 8


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/www``; stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_http_and_file_urls_give_the_same_output_as_local_paths(tmp_path, http_root):
    www, base = http_root
    shards = _shards(www)
    local = ingest([str(p) for p in shards], tmp_path / "local", IngestConfig())
    urls = [f"{base}/{shards[0].name}", shards[1].as_uri(), f"{base}/{shards[2].name}"]
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    remote = ingest(expand_sources("urls.txt", tmp_path), tmp_path / "remote", IngestConfig())
    assert (local.kept, remote.kept) == (12, 12)
    assert _tree_digest(tmp_path / "local") == _tree_digest(tmp_path / "remote")
    assert not list((tmp_path / "remote").glob(".fetch-*"))  # downloads are cleaned up


def test_a_rerun_skips_finished_shards_and_redoes_changed_ones(tmp_path):
    shards = _shards(tmp_path / "in")
    sources, out, state = [str(p) for p in shards], tmp_path / "out", tmp_path / "state"
    first = ingest(sources, out, IngestConfig(), state_dir=state)
    digest = _tree_digest(out)
    again = ingest(sources, out, IngestConfig(), state_dir=state)
    assert (first.shards_skipped, again.shards_skipped) == (0, 3)
    assert _tree_digest(out) == digest
    # a changed input shard is redone, the others are not
    with ShardWriter(shards[1]) as w:
        w.write("new", {"jpg": _jpg(200), "txt": "replaced"})
    changed = ingest(sources, out, IngestConfig(), state_dir=state)
    assert (changed.shards_skipped, changed.kept) == (2, 9)
    # changed params redo everything; a damaged output is redone too
    assert ingest(sources, out, IngestConfig(max_text_chars=5), state_dir=state
                  ).shards_skipped == 0
    (out / "shards" / "00000.tar").write_bytes(b"garbage")
    assert ingest(sources, out, IngestConfig(max_text_chars=5), state_dir=state
                  ).shards_skipped == 2


def test_a_shard_killed_midway_leaves_no_final_file_and_is_redone(tmp_path):
    shards = _shards(tmp_path / "in")
    sources, out, state = [str(p) for p in shards], tmp_path / "out", tmp_path / "state"
    ingest(sources, out, IngestConfig(), state_dir=state)
    digest = _tree_digest(out)
    # what a kill -9 inside shard 2 leaves: a temp file, no final outputs, no record
    (out / "shards" / "00002.tar").unlink()
    (out / "shards" / ".00002.tar.tmp-1-deadbeef").write_bytes(b"half")
    (state / "00002.json").unlink()
    rerun = ingest(sources, out, IngestConfig(), state_dir=state)
    assert rerun.shards_skipped == 2
    assert _tree_digest(out) == digest


def test_two_worker_processes_give_byte_identical_outputs(tmp_path):
    sources = [str(p) for p in _shards(tmp_path / "in", n=4)]
    ingest(sources, tmp_path / "one", IngestConfig(workers=1))
    ingest(sources, tmp_path / "two", IngestConfig(workers=2))
    assert _tree_digest(tmp_path / "one") == _tree_digest(tmp_path / "two")


def test_duplicate_images_across_shards_point_to_the_first(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        with ShardWriter(folder / f"{i:05d}.tar") as w:
            w.write(f"k{i}", {"jpg": _jpg(7), "txt": "same"})
            w.write(f"u{i}", {"jpg": _jpg(100 + 50 * i), "txt": "unique"})
    result = ingest(expand_sources("in", tmp_path), tmp_path / "out", IngestConfig())
    rows = {r["key"]: r["duplicate_of"]
            for r in pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()}
    assert rows == {"k0": None, "u0": None, "k1": "k0", "u1": None}
    assert result.duplicates == 1
