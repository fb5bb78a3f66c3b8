"""Shard jobs with an executor address that answers nothing: one clear error naming it."""

import pytest

from mofi_core.curate.ingest import ingest
from mofi_core.parallel import use_executor


def test_an_unreachable_scheduler_is_a_clear_error(tiny_world, tmp_path, monkeypatch):
    from tests.ports import free_port

    monkeypatch.setenv("MOFI_DASK_CONNECT_TIMEOUT", "2s")
    layout, params, _ = tiny_world
    with use_executor(f"tcp://127.0.0.1:{free_port()}"), \
            pytest.raises(RuntimeError, match="cannot reach the Dask scheduler"):
        ingest(layout.corpus_shards, tmp_path / "x", params.ingest)
