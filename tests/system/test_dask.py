"""Shard jobs on a Dask cluster (2 worker processes on loopback) give the same outputs as the
local process pool: ingest, ner and build byte for byte, score to the last float bits."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mofi_core.config.build import BuildConfig
from mofi_core.curate.build import build
from mofi_core.curate.ingest import ingest
from mofi_core.curate.ner import run_ner
from mofi_core.curate.score import score
from mofi_core.models.artifact import build_model, default_meta, save_model
from mofi_core.models.factory import arch_config
from mofi_core.parallel import use_executor


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as c:
        yield c


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ingest_and_ner_on_dask_equal_the_local_pool(cluster, tiny_world, tmp_path):
    from distributed import Client

    layout, params, _ = tiny_world
    ingest(layout.corpus_shards, tmp_path / "local" / "ingest", params.ingest)
    run_ner(tmp_path / "local" / "ingest", layout.kb, tmp_path / "local" / "ner", params.ner)
    with Client(cluster.scheduler_address) as client:
        before = sum(client.run(lambda: 1).values())
    with use_executor(cluster.scheduler_address):
        ingest(layout.corpus_shards, tmp_path / "dask" / "ingest", params.ingest)
        run_ner(tmp_path / "dask" / "ingest", layout.kb, tmp_path / "dask" / "ner", params.ner)
    assert before == 2  # two worker processes took the jobs
    for stage in ("ingest", "ner"):
        assert _files(tmp_path / "dask" / stage) == _files(tmp_path / "local" / stage)
    assert pq.read_table(tmp_path / "dask" / "ner" / "mentions.parquet").num_rows > 0


def test_score_and_build_on_dask_equal_the_local_path(cluster, tiny_world, tmp_path):
    layout, params, _ = tiny_world
    ingest(layout.corpus_shards, tmp_path / "ingest", params.ingest)
    run_ner(tmp_path / "ingest", layout.kb, tmp_path / "ner", params.ner)
    torch.manual_seed(0)
    meta = default_meta("clip", "mofi-tiny", arch_config("mofi-tiny"), "clip")
    save_model(tmp_path / "clip", build_model(meta), meta)
    # a capped, multi-rule build so that both passes carry real per-entity state
    rules = BuildConfig(rules=("top_k", "null_quantile"), top_k=2, null_quantile=0.5,
                        min_images_per_entity=2, max_images_per_entity=6)
    for where in ("local", "dask"):
        with use_executor(cluster.scheduler_address if where == "dask" else ""):
            score(tmp_path / "ingest", tmp_path / "ner", layout.kb, tmp_path / "clip",
                  tmp_path / where / "score", params.score, num_workers=0,
                  state_dir=tmp_path / where / "state")
            build(tmp_path / "ingest", tmp_path / where / "score", tmp_path / where / "i2e",
                  rules, ner_dir=tmp_path / "ner")
    from distributed import Client

    with Client(cluster.scheduler_address) as client:  # the workers, not this process, scored
        loaded = client.run(lambda: __import__("mofi_core.curate.score").curate.score
                            ._WORKER_SCORER is not None)
    assert any(loaded.values())
    local = pq.read_table(tmp_path / "local" / "score" / "scores.parquet").to_pydict()
    dask = pq.read_table(tmp_path / "dask" / "score" / "scores.parquet").to_pydict()
    assert len(local["key"]) > 50
    assert (dask["key"], dask["entity_id"]) == (local["key"], local["entity_id"])
    np.testing.assert_allclose(dask["score"], local["score"], rtol=0, atol=1e-6)
    nulls = [pq.read_table(tmp_path / w / "score" / "null.parquet").to_pydict()
             for w in ("local", "dask")]
    assert nulls[1]["key"] == nulls[0]["key"]
    np.testing.assert_allclose(np.concatenate(nulls[1]["scores"]),
                               np.concatenate(nulls[0]["scores"]), rtol=0, atol=1e-6)
    i2e = [_files(tmp_path / w / "i2e") for w in ("local", "dask")]
    assert "labels.parquet" in i2e[0] and any(k.startswith("shards/") for k in i2e[0])
    assert i2e[1] == i2e[0]
    # a re-run on the cluster skips every shard the first run scored (parts left untouched)
    parts = sorted((tmp_path / "dask" / "score" / "parts").iterdir())
    before = [p.stat().st_mtime_ns for p in parts]
    with use_executor(cluster.scheduler_address):
        score(tmp_path / "ingest", tmp_path / "ner", layout.kb, tmp_path / "clip",
              tmp_path / "dask" / "score", params.score, num_workers=0,
              state_dir=tmp_path / "dask" / "state")
    assert [p.stat().st_mtime_ns for p in parts] == before
