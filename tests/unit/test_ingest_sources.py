"""ingest inputs (folder, glob, brace, manifest, URLs), shard-level resume and worker processes."""

import functools
import hashlib
import http.server
import io
import threading
from pathlib import Path
from typing import ClassVar

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mofi_core.config.ingest import IngestConfig
from mofi_core.curate.ingest import RejectRateError, ingest
from mofi_core.io.shards import ShardWriter
from mofi_core.io.sources import SourceError, TransportError, expand_sources


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


class _FlakyHandler(_QuietHandler):
    """Answers 503 to the first ``failures`` GETs of each path, then serves the file."""

    failures = 0
    seen: ClassVar[dict[str, int]] = {}  # per server: each test makes its own subclass

    def do_GET(self) -> None:
        n = self.seen[self.path] = self.seen.get(self.path, 0) + 1
        if n <= self.failures:
            self.send_error(503, "Service Unavailable")
            return
        super().do_GET()


@pytest.fixture
def flaky_http(tmp_path):
    """An HTTP server on 127.0.0.1 whose first answers per path are 503s."""
    root = tmp_path / "www"
    root.mkdir()

    def serve(failures: int) -> str:
        handler = type("H", (_FlakyHandler,), {"failures": failures, "seen": {}})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    servers: list = []
    yield root, serve
    for server in servers:
        server.shutdown()
        server.server_close()


FAST = {"fetch_backoff_s": 0.01, "max_reject_fraction": 0.9}


def test_a_failing_server_is_retried_and_the_output_equals_the_local_run(tmp_path, flaky_http):
    www, serve = flaky_http
    shards = _shards(www)
    base = serve(failures=2)  # two 503s per shard, the third try gets it
    local = ingest([str(p) for p in shards], tmp_path / "local", IngestConfig())
    remote = ingest([f"{base}/{p.name}" for p in shards], tmp_path / "remote",
                    IngestConfig(fetch_attempts=3, **FAST))
    assert (local.kept, remote.kept, remote.rejected) == (12, 12, 0)
    assert _tree_digest(tmp_path / "local") == _tree_digest(tmp_path / "remote")


def test_a_server_that_stays_down_fails_the_stage_and_marks_nothing_done(tmp_path,
                                                                         flaky_http):
    """A transport failure is never a rejected shard: the run stops naming the shard and what
    to check, the shards before it are done and kept, the failed one has no record and no
    output, and nothing partial is left in the output folder."""
    www, serve = flaky_http
    shards = _shards(www)
    good, bad = serve(failures=0), serve(failures=99)
    sources = [f"{good}/{shards[0].name}", f"{bad}/{shards[1].name}", f"{good}/{shards[2].name}"]
    out, state, scratch = tmp_path / "out", tmp_path / "state", tmp_path / "scratch"
    with pytest.raises(TransportError, match=r"shard 00001 .*00001\.tar.*3 attempt\(s\).*"
                                             r"HTTP 503.*re-run the stage") as err:
        ingest(sources, out, IngestConfig(fetch_attempts=3, workers=1, **FAST),
               state_dir=state, scratch=scratch)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in state.glob("*.json")) == ["00000.json"]
    assert not (out / "shards" / "00001.tar").exists()
    assert not (out / "rejects.parquet").exists()
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [
        "00000.manifest.parquet", "00000.rejects.parquet", "00000.tar"]
    assert not list(scratch.glob("*"))
    # the server is back: the re-run redoes only the failed shard onwards; same bytes as clean
    sources[1] = f"{good}/{shards[1].name}"
    rerun = ingest(sources, out, IngestConfig(fetch_attempts=3, workers=1, **FAST),
                   state_dir=state, scratch=scratch)
    clean = ingest([str(p) for p in shards], tmp_path / "clean", IngestConfig())
    assert rerun.shards_skipped == 1
    assert _tree_digest(out) == _tree_digest(tmp_path / "clean")
    assert rerun.metrics() == clean.metrics()


def test_a_shard_that_is_not_there_is_data_and_counts_as_the_samples_it_held(tmp_path,
                                                                            flaky_http):
    """404 is a fact about the corpus: one listed rejection, counted in the reject gate as a
    typical shard's worth of samples (not as one row)."""
    www, serve = flaky_http
    shards = _shards(www, n=4, per=5)
    base = serve(failures=0)
    sources = [f"{base}/{p.name}" for p in shards[:3]] + [f"{base}/gone.tar"]
    result = ingest(sources, tmp_path / "out", IngestConfig(**FAST))
    m = result.metrics()
    assert (m["samples_kept"], m["samples_rejected"], m["shards_unreadable"],
            m["samples_lost_estimate"], m["samples_in"]) == (15, 0, 1, 5, 20)
    assert m["reject_fraction"] == pytest.approx(0.25)
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert [(r["key"], r["shard"]) for r in rejects] == [("*", "gone.tar")]
    with pytest.raises(RejectRateError, match=r"25\.0%.*1 unreadable shard\(s\) counted as ~5"):
        ingest(sources, tmp_path / "out2", IngestConfig(**{**FAST, "max_reject_fraction": 0.2}))


def test_a_truncated_shard_counts_what_it_lost_beyond_what_was_read(tmp_path):
    shards = _shards(tmp_path / "in", n=3, per=6)
    data = shards[2].read_bytes()
    shards[2].write_bytes(data[: len(data) // 2])  # about half of its samples survive
    result = ingest([str(p) for p in shards], tmp_path / "out", IngestConfig(**FAST))
    m = result.metrics()
    kept_from_cut = m["samples_kept"] - 12
    assert 0 < kept_from_cut < 6
    assert m["shards_unreadable"] == 1
    # the cut sample (if any) is a listed rejection; the rest is the estimate
    assert m["samples_in"] == 18
    assert m["samples_lost_estimate"] == 6 - kept_from_cut - m["samples_rejected"]
