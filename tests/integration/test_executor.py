"""Shard jobs on a Dask cluster (2 worker processes on loopback) give the same outputs as the
local process pool."""

import pyarrow.parquet as pq
import pytest

from mofi_core.curate.ingest import ingest
from mofi_core.curate.ner import run_ner
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


def test_an_unreachable_scheduler_is_a_clear_error(tiny_world, tmp_path, monkeypatch):
    from tests.ports import free_port

    monkeypatch.setenv("MOFI_DASK_CONNECT_TIMEOUT", "2s")
    layout, params, _ = tiny_world
    with use_executor(f"tcp://127.0.0.1:{free_port()}"), \
            pytest.raises(RuntimeError, match="cannot reach the Dask scheduler"):
        ingest(layout.corpus_shards, tmp_path / "x", params.ingest)
