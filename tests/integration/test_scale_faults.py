"""Faults of the scale-out path on the real components: a SeaweedFS S3 server that goes away
for longer than the retries, and a Dask cluster one of whose workers lacks the S3 keys. Neither
may lose a shard: the stage fails naming the shard, the endpoint and what to check, no shard is
marked done that was not read, and a re-run once the fault is gone gives the bytes of a clean
run."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mofi_core.config.load import apply_overrides, read_params_file
from mofi_core.curate.ingest import ingest
from mofi_core.io import s3, sources
from mofi_core.io.sources import TransportError, expand_sources
from mofi_core.parallel import use_executor
from mofi_core.runner import execute
from mofi_core.stages import BY_NAME
from tests.conftest import ROOT, TINY
from tests.ports import free_port
from tests.servers import FaultProxy


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def corpus_in_s3(s3_env, tiny_world):
    """The tiny world's corpus shards under ``<bucket>/corpus/``; returns the shard URLs."""
    layout, _, _ = tiny_world
    shards = sorted(layout.corpus_shards.glob("*.tar"))
    assert len(shards) >= 3
    for p in shards:
        s3.upload(p, f"{s3_env}/corpus/{p.name}")
    return [f"{s3_env}/corpus/{p.name}" for p in shards]


@pytest.fixture()
def clean_ingest(tiny_world, tmp_path):
    """What an ingest of the same shards gives with no fault (from local disk)."""
    layout, params, _ = tiny_world
    out = tmp_path / "clean"
    ingest(layout.corpus_shards, out, params.ingest.model_copy(update={"workers": 1}))
    return out


def _project(folder: Path, corpus_url: str) -> Path:
    folder.mkdir(parents=True)
    raw = apply_overrides(read_params_file(ROOT / "params.yaml"), {
        **TINY, "ingest.input": corpus_url, "runtime.ingest.workers": 1,
        "runtime.ingest.fetch_attempts": 2, "runtime.ingest.fetch_backoff_s": 0.2})
    (folder / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    return folder


def test_s3_down_longer_than_the_retries_fails_ingest_and_a_rerun_equals_a_clean_run(
        s3_server, s3_env, corpus_in_s3, clean_ingest, tmp_path, monkeypatch):
    """The store goes away after the first shard and stays away through every retry: the stage
    fails with one line naming the shard and the endpoint; the first shard alone is marked done;
    nothing is published as a smaller dataset. When the store is back, the re-run skips the
    shard that was done and ends byte-identical to a clean run."""
    bucket = s3_env.removeprefix("s3://")
    with FaultProxy(s3_server.s3_port, cut=0, delay=0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv("MOFI_S3_MAX_ATTEMPTS", "2")
        fetches, outages = [], []
        real_fetch = sources._fetch

        def fetch_then_outage(source, dest):
            fetches.append(source)
            if len(fetches) == 2 and not outages:  # it starts as the second shard is fetched
                outages.append(time.monotonic())
                proxy.go_down()
            return real_fetch(source, dest)

        monkeypatch.setattr(sources, "_fetch", fetch_then_outage)
        project = _project(tmp_path / "project", f"s3://{bucket}/corpus/")
        with pytest.raises(TransportError) as err:
            execute(BY_NAME["ingest"], project / "params.yaml", project)
        msg = str(err.value)
        assert "\n" not in msg
        assert "shard 00001" in msg and corpus_in_s3[1] in msg and proxy.endpoint in msg
        assert "2 attempt(s)" in msg and "S3 server is up" in msg
        # one fetch per try of shard 1, and no shard after it was started
        assert fetches == [corpus_in_s3[0], corpus_in_s3[1], corpus_in_s3[1]]
        state = project / ".mofi" / "state" / "ingest"
        assert sorted(p.name for p in state.glob("*.json")) == ["00000.json"]
        assert not (project / "metrics" / "ingest.json").exists()  # no smaller dataset
        assert not (project / "data" / "ingest" / "manifest.parquet").exists()
        assert not list((project / ".mofi" / "scratch").rglob(".fetch-*"))

        proxy.come_back()
        fetches.clear()
        metrics = execute(BY_NAME["ingest"], project / "params.yaml", project)
    assert _tree(project / "data" / "ingest") == _tree(clean_ingest)
    assert metrics["samples_lost_estimate"] == 0 and metrics["shards_unreadable"] == 0
    assert metrics["shards"] == len(corpus_in_s3)


def _dask(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "dask"), *args], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.fixture()
def cluster_one_worker_without_keys(s3_server, tmp_path):
    """A Dask scheduler and two workers on loopback, as docs/scale.md starts them; the second
    worker's environment has the S3 endpoint but no keys (a misconfigured node)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    keyed = {**base, **s3_server.env()}
    keyless = {**base, "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_REGION": "us-east-1",
               "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
               "AWS_EC2_METADATA_DISABLED": "true"}
    loopback = ["--host", "127.0.0.1", "--no-dashboard"]
    procs = [_dask("scheduler", "--port", str(port), *loopback, env=keyed,
                   log=tmp_path / "scheduler.log")]
    try:
        for name, env in (("keyed", keyed), ("keyless", keyless)):
            procs.append(_dask("worker", address, *loopback, "--nthreads", "1", "--name", name,
                               env=env, log=tmp_path / f"worker-{name}.log"))
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_a_dask_worker_without_s3_keys_fails_loudly_and_marks_nothing_done(
        s3_env, corpus_in_s3, clean_ingest, cluster_one_worker_without_keys, tiny_world,
        tmp_path):
    _, params, _ = tiny_world
    cfg = params.ingest.model_copy(update={"fetch_attempts": 2, "fetch_backoff_s": 0.1})
    urls = expand_sources(f"{s3_env}/corpus/", tmp_path)
    out, state = tmp_path / "out", tmp_path / "state"
    with use_executor(cluster_one_worker_without_keys), \
            pytest.raises(TransportError) as err:
        ingest(urls, out, cfg, state_dir=state, scratch=tmp_path / "scratch")
    msg = str(err.value)
    assert "\n" not in msg
    assert "AWS_ACCESS_KEY_ID" in msg and "Dask worker" in msg and "shard 000" in msg
    assert s3.SCHEME in msg and "endpoint http://127.0.0.1" in msg
    # a shard is marked done only when it was read: every record's outputs equal the clean run
    clean = _tree(clean_ingest)
    for record in state.glob("*.json"):
        for suffix in (".tar", ".manifest.parquet", ".rejects.parquet"):
            rel = ("shards/" if suffix == ".tar" else "parts/") + record.stem + suffix
            assert _tree(out)[rel] == clean[rel]
    assert len(list(state.glob("*.json"))) < len(urls)
    assert not (out / "manifest.parquet").exists()
    # the same cluster, every shard through this process's keys: the clean bytes
    result = ingest(urls, out, cfg.model_copy(update={"workers": 1}), state_dir=state)
    assert _tree(out) == clean
    assert result.metrics()["shards_unreadable"] == 0


def test_the_fault_proxy_outage_is_an_outage(s3_server, s3_env, monkeypatch):
    """The tool the tests above rely on: while down, S3 calls fail as unavailable."""
    with FaultProxy(s3_server.s3_port, cut=0, delay=0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv("MOFI_S3_MAX_ATTEMPTS", "1")
        s3.write_bytes(f"{s3_env}/x", b"1")
        proxy.go_down()
        started = time.monotonic()
        with pytest.raises(s3.S3Unavailable):
            s3.head(f"{s3_env}/x")
        assert time.monotonic() - started < 30
        proxy.come_back()
        assert s3.read_bytes(f"{s3_env}/x") == b"1"
