"""ingest reads what the real img2dataset writes (webdataset tars + per-shard parquet/stats),
downloaded from a local HTTP server: every image it fetched, with its caption; what it failed
to fetch is in its own parquet and not in ours."""

import json

import pyarrow.parquet as pq
import pytest

from mofi_core.curate.ingest import ingest
from mofi_core.io.shards import iter_samples
from tests.img2dataset_run import corpus_as_urls, run_img2dataset, serve


@pytest.fixture(scope="module")
def fetched(tiny_world, tmp_path_factory):
    layout, params, _ = tiny_world
    work = tmp_path_factory.mktemp("img2dataset")
    rows = corpus_as_urls(sorted(layout.corpus_shards.glob("*.tar")), work / "www", limit=60)
    (work / "www" / "not-an-image.jpg").write_text("<html>gone</html>")
    with serve(work / "www") as base:
        out = run_img2dataset(rows, base, work / "out", work, per_shard=25,
                              broken=("missing.jpg", "not-an-image.jpg"))
    return rows, out, params


def test_the_output_is_the_tools_own_layout(fetched):
    _, out, _ = fetched
    tars = sorted(out.glob("*.tar"))
    assert [t.stem for t in tars] == ["00000", "00001", "00002"]  # 62 urls, 25 a shard
    for t in tars:
        assert (out / f"{t.stem}.parquet").is_file() and (out / f"{t.stem}_stats.json").is_file()


def test_ingest_keeps_every_fetched_image_with_its_caption(fetched, tmp_path):
    rows, out, params = fetched
    status = [r for p in sorted(out.glob("0*.parquet")) for r in pq.read_table(p).to_pylist()]
    ok = {r["key"]: r["caption"] for r in status if r["status"] == "success"}
    failed = [r for r in status if r["status"] != "success"]
    assert len(ok) == len(rows) == 60, [(r["url"], r["error_message"]) for r in failed]
    assert sorted(r["url"].rsplit("/", 1)[1] for r in failed) == ["missing.jpg",
                                                                  "not-an-image.jpg"]
    metrics = ingest(out, tmp_path / "ingest",
                     params.ingest.model_copy(update={"workers": 1})).metrics()
    # the demo world mixes in broken samples (tiny images, empty alt-texts...): the tool
    # fetches them as it fetches anything, ingest rejects them by name, the rest are kept
    rejects = pq.read_table(tmp_path / "ingest" / "rejects.parquet").to_pylist()
    manifest = pq.read_table(tmp_path / "ingest" / "manifest.parquet").to_pylist()
    assert metrics["samples_in"] == 60 and metrics["samples_rejected"] == len(rejects) < 10
    assert all(r["reason"] for r in rejects)
    kept = {m["key"] for m in manifest}
    assert kept | {r["key"] for r in rejects} == set(ok) and len(kept) == 60 - len(rejects)
    texts = {s["__key__"]: s["txt"].decode() for t in sorted((tmp_path / "ingest" / "shards")
                                                             .glob("*.tar"))
             for s in iter_samples(t)}
    assert texts == {k: v.strip() for k, v in ok.items() if k in kept}
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    assert sum(s["successes"] for s in stats) == 60
