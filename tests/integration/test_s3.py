"""S3 through boto3 against a real S3 server (SeaweedFS on loopback), with and without a proxy
that cuts and delays connections."""

import contextlib
import hashlib
import io
import shutil
import threading
import time
import uuid

import pyarrow.parquet as pq
import pytest

from mofi_core.config.ingest import IngestConfig
from mofi_core.curate.ingest import ingest
from mofi_core.io import s3
from mofi_core.io.sources import SourceError, expand_sources
from tests.ports import free_port
from tests.servers import FaultProxy


def _objects(bucket_url):
    return sorted(u for u, _ in s3.list_objects(bucket_url + "/"))


@contextlib.contextmanager
def api_calls():
    """Every S3 API call the current client makes meanwhile: (operation, thread name)."""
    calls: list[tuple[str, str]] = []

    def hook(model, **_):
        calls.append((model.name, threading.current_thread().name))

    events = s3.client().meta.events
    events.register("before-call.s3", hook)
    try:
        yield calls
    finally:
        events.unregister("before-call.s3", hook)


def test_upload_is_atomic_and_multipart_above_the_threshold(s3_env, tmp_path, monkeypatch):
    """One PUT below the threshold (S3 commits a PUT whole: no temporary key, no copy), a
    multipart upload above it (committed whole by CompleteMultipartUpload); both return the
    ETag the listing shows."""
    monkeypatch.setenv("MOFI_S3_MULTIPART_MB", "5")
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (12 * 4096))  # 12 MiB: three 5 MiB parts
    with api_calls() as calls:
        etag = s3.upload(big, f"{s3_env}/out/big.bin")
    assert s3.read_bytes(f"{s3_env}/out/big.bin") == big.read_bytes()
    # a multipart object's ETag is "<md5 of part md5s>-<parts>"
    assert etag.endswith("-3") and s3.head(f"{s3_env}/out/big.bin")["ETag"] == f'"{etag}"'
    ops = [op for op, _ in calls]
    assert ops.count("UploadPart") == 3 and ops.count("CompleteMultipartUpload") == 1
    assert "CopyObject" not in ops and "DeleteObject" not in ops

    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    with api_calls() as calls:
        etag = s3.upload(small, f"{s3_env}/out/small.bin")
    assert [op for op, _ in calls] == ["PutObject"]
    assert etag == hashlib.md5(small.read_bytes()).hexdigest()  # a one-PUT object's ETag
    assert _objects(s3_env) == [f"{s3_env}/out/big.bin", f"{s3_env}/out/small.bin"]
    assert s3.write_bytes(f"{s3_env}/out/small.json", b"{}") == hashlib.md5(b"{}").hexdigest()
    assert s3.exists(f"{s3_env}/out/small.json") and not s3.exists(f"{s3_env}/out/nope")
    listed = {u: (size, etag) for u, size, etag in s3.list_objects_etag(f"{s3_env}/out/")}
    assert listed[f"{s3_env}/out/small.bin"] == (1000, etag)


def test_deletes_go_1000_keys_per_request_and_transfers_run_in_parallel(s3_env, monkeypatch):
    monkeypatch.setenv("MOFI_S3_CONCURRENCY", "8")
    urls = [f"{s3_env}/many/{i:05d}" for i in range(1001)]
    with api_calls() as calls:
        s3.map_parallel(lambda u: s3.write_bytes(u, b"x"), urls)
    assert len({thread for _, thread in calls}) > 1
    assert len(_objects(s3_env)) == 1001
    with api_calls() as calls:
        assert s3.delete_many([*urls, f"{s3_env}/many/already-gone"]) == 1002
    assert [op for op, _ in calls] == ["DeleteObjects", "DeleteObjects"]
    assert _objects(s3_env) == []
    monkeypatch.setenv("MOFI_S3_CONCURRENCY", "0")
    with pytest.raises(ValueError, match="MOFI_S3_CONCURRENCY=0 must be at least 1"):
        s3.map_parallel(len, ["a", "b"])


def test_map_parallel_raises_the_first_failure_and_starts_nothing_after_it(monkeypatch):
    monkeypatch.setenv("MOFI_S3_CONCURRENCY", "2")
    started = []

    def work(i):
        started.append(i)
        if i == 0:
            raise s3.S3Unavailable("boom")
        time.sleep(0.05)
        return i

    with pytest.raises(s3.S3Unavailable, match="boom"):
        s3.map_parallel(work, range(50))
    assert len(started) < 50
    assert s3.map_parallel(lambda i: i * 2, range(5)) == [0, 2, 4, 6, 8]


def test_create_bucket_is_idempotent(s3_server, s3_env):
    url = f"s3://mofi-new-{uuid.uuid4().hex[:8]}/some/prefix"
    assert s3.create_bucket(url) is True
    assert s3.create_bucket(url) is False  # there, and ours
    s3.write_bytes(f"{url}/x", b"1")
    assert _objects(url.rsplit("/", 2)[0]) == [f"{url}/x"]


def test_errors_name_the_object_and_what_to_do(s3_env, monkeypatch):
    with pytest.raises(s3.S3Error, match=r"mofi-.*/missing\.tar.*(404|NoSuchKey|Not Found)"):
        s3.read_bytes(f"{s3_env}/missing.tar")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(s3.S3Error, match=r"missing\.tar.*check the credentials") as err:
        s3.head(f"{s3_env}/missing.tar")
    assert "wrong-secret" not in str(err.value)
    with pytest.raises(s3.S3Error, match="check the credentials"):  # not "missing"
        s3.exists(f"{s3_env}/missing.tar")


def test_errors_say_whether_the_data_or_the_store_is_at_fault(s3_env, monkeypatch):
    """A missing object is a fact about the data; a refused key, a missing key or a dead
    endpoint is a fault of the store, which callers must never count as bad data."""
    with pytest.raises(s3.S3NotFound):
        s3.head(f"{s3_env}/missing.tar")
    with pytest.raises(s3.S3NotFound, match="create the bucket"):
        list(s3.list_objects("s3://mofi-no-such-bucket-here/x/"))
    with monkeypatch.context() as env:
        env.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        with pytest.raises(s3.S3AccessDenied, match="check the credentials"):
            s3.head(f"{s3_env}/missing.tar")
    with monkeypatch.context() as env:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.delenv(key)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        env.setenv("AWS_CONFIG_FILE", "/nonexistent")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with pytest.raises(s3.S3AccessDenied, match=r"AWS_ACCESS_KEY_ID.*Dask worker"):
            s3.head(f"{s3_env}/missing.tar")
    with monkeypatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
        env.setenv("MOFI_S3_MAX_ATTEMPTS", "2")
        with pytest.raises(s3.S3Unavailable, match=r"127\.0\.0\.1.*S3 server is up"):
            s3.head(f"{s3_env}/missing.tar")


def test_a_changed_object_is_not_mixed_into_a_resumed_read(s3_env):
    url = f"{s3_env}/changing.bin"
    s3.write_bytes(url, b"a" * 100_000)
    reader = s3.S3Reader(url)
    assert reader.read(10) == b"a" * 10
    reader._drop()  # as if the connection broke here
    s3.write_bytes(url, b"b" * 100_000)
    with pytest.raises(s3.S3Error, match="changed while it was being read"):
        reader.read(10)


def _shards(tiny_world, n=3):
    layout, _, _ = tiny_world
    return sorted(layout.corpus_shards.glob("*.tar"))[:n]


def _put_shards(bucket, shards, prefix="corpus"):
    for p in shards:
        s3.upload(p, f"{bucket}/{prefix}/{p.name}")
    s3.write_bytes(f"{bucket}/{prefix}/shards.txt",
                   "\n".join(p.name for p in shards).encode() + b"\n# a comment\n")


def test_prefix_glob_brace_and_manifest_name_the_same_objects(s3_env, tiny_world, tmp_path):
    shards = _shards(tiny_world)
    _put_shards(s3_env, shards)
    want = [f"{s3_env}/corpus/{p.name}" for p in shards]
    assert expand_sources(f"{s3_env}/corpus/", tmp_path) == want
    assert expand_sources(f"{s3_env}/corpus/*.tar", tmp_path) == want
    assert expand_sources(f"{s3_env}/corpus/{{00000..00002}}.tar", tmp_path) == want
    assert expand_sources(f"{s3_env}/corpus/shards.txt", tmp_path) == want
    assert expand_sources(f"@{s3_env}/corpus/shards.txt", tmp_path) == want
    with pytest.raises(SourceError, match="matches no object"):
        expand_sources(f"{s3_env}/corpus/*.tgz", tmp_path)


def test_webdataset_reads_s3_urls_through_the_registered_opener(s3_env, tiny_world):
    import webdataset as wds

    shard = _shards(tiny_world, 1)[0]
    s3.upload(shard, f"{s3_env}/wds/{shard.name}")
    s3.register_webdataset_scheme()
    with wds.gopen(f"{s3_env}/wds/{shard.name}") as fh:
        assert fh.read() == shard.read_bytes()


def _ingest_tables(out):
    return (pq.read_table(out / "manifest.parquet").to_pylist(),
            pq.read_table(out / "rejects.parquet").to_pylist(),
            {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))})


def test_ingest_from_s3_through_a_faulty_network_equals_the_local_run(s3_env, s3_server,
                                                                      tiny_world, tmp_path,
                                                                      monkeypatch):
    shards = _shards(tiny_world)
    _put_shards(s3_env, shards)
    local = tmp_path / "local"
    local.mkdir()
    for p in shards:
        shutil.copy(p, local / p.name)
    cfg = IngestConfig(workers=1)
    ingest(local, tmp_path / "out-local", cfg)
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    with FaultProxy(port, cut=1.0, delay=0.3, delay_s=0.3, cut_after=(2_000, 60_000),
                    throttle=0.3, seed=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        sources = expand_sources(f"{s3_env}/corpus/*.tar", tmp_path)
        ingest(sources, tmp_path / "out-s3", cfg)
    # resets mid-response, delays and 503 SlowDown replies all happened, and were survived
    assert proxy.stats["cuts"] >= 3 and proxy.stats["delays"] >= 1, proxy.stats
    assert proxy.stats["throttles"] >= 2, proxy.stats
    manifest_l, rejects_l, tars_l = _ingest_tables(tmp_path / "out-local")
    manifest_s, rejects_s, tars_s = _ingest_tables(tmp_path / "out-s3")
    assert manifest_s == manifest_l and rejects_s == rejects_l and len(manifest_l) > 100
    assert tars_s == tars_l


def test_a_read_resumes_at_the_byte_where_the_connection_was_cut(s3_env, s3_server,
                                                                 monkeypatch):
    data = bytes(range(256)) * 8192  # 2 MiB
    s3.write_bytes(f"{s3_env}/resume.bin", data)
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    with FaultProxy(port, cut=1.0, delay=0.0, cut_after=(50_000, 400_000), seed=1) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        reader = s3.S3Reader(f"{s3_env}/resume.bin", retries=50, backoff_s=0.01)
        got = io.BufferedReader(reader, buffer_size=1 << 16).read()
    assert got == data
    assert reader.reopened >= 3  # every connection was cut; each resume continued the bytes
    assert proxy.stats["cuts"] >= reader.reopened


class _Interrupt(Exception):
    pass


def test_training_resumes_from_checkpoints_kept_in_s3_on_a_new_machine(s3_env, truth_i2e,
                                                                       tmp_path):
    """A run stopped after step 4 (checkpoints every 2, copied to S3), its local checkpoints
    lost; a fresh run downloads step 4 and ends with the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    from mofi_core.train.run import train_model

    _layout, params, i2e = truth_i2e
    cfg = params.train.model_copy(update={
        "recipe": "supervised", "steps": 6, "batch_size": 8, "warmup_steps": 1,
        "log_every": 1, "checkpoint_every": 2, "keep_checkpoints": 2, "num_workers": 0,
        "threads": 1})
    train_model(i2e, tmp_path / "ref", cfg, lambda s, r: None, ckpt_root=tmp_path / "ref-ck")

    def stop_at_5(step, row):
        if step == 5:
            raise _Interrupt

    remote = f"{s3_env}/ckpt"
    with pytest.raises(_Interrupt):
        train_model(i2e, tmp_path / "a", cfg, stop_at_5, ckpt_root=tmp_path / "machine-a",
                    remote_ckpt=remote)
    steps = sorted({u.split("/step-")[1][:9] for u, _ in s3.list_objects(remote + "/")})
    assert steps == ["000000002", "000000004"]
    resumed = []
    hist = train_model(i2e, tmp_path / "b", cfg, lambda s, r: resumed.append(s),
                       ckpt_root=tmp_path / "machine-b", remote_ckpt=remote)
    assert resumed == [5, 6] and [r["step"] for r in hist] == [1, 2, 3, 4, 5, 6]
    want = load_file(str(tmp_path / "ref" / "model.safetensors"))
    got = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert want.keys() == got.keys()
    for k in want:
        assert (want[k] - got[k]).abs().max() <= 1e-6, k
    steps = sorted({u.split("/step-")[1][:9] for u, _ in s3.list_objects(remote + "/")})
    assert steps == ["000000004", "000000006"]  # keep_checkpoints, in S3 too


def test_training_streams_a_published_i2e_dataset_from_s3(s3_env, truth_i2e, tmp_path):
    """build.publish copies the I2E folder to S3; train.data = that URL streams it (a loader
    worker process opens s3:// shards) and learns exactly what training on the local folder
    learns."""
    from safetensors.torch import load_file

    from mofi_core.curate.build import publish
    from mofi_core.train.run import train_model

    _layout, params, i2e = truth_i2e
    url = f"{s3_env}/datasets/i2e"
    n = publish(i2e, url)
    keys = [u[len(url) + 1:] for u, _ in s3.list_objects(url + "/")]
    assert len(keys) == n and "vocab.json" in keys and any(k.startswith("shards/") for k in keys)
    cfg = params.train.model_copy(update={
        "recipe": "supervised", "steps": 4, "batch_size": 8, "warmup_steps": 1,
        "log_every": 2, "num_workers": 1, "threads": 1,
        # the same stream both ways: a local set may otherwise be batched from memory
        "data_in_memory": False})
    train_model(i2e, tmp_path / "local", cfg, lambda s, r: None)
    train_model(url, tmp_path / "s3", cfg, lambda s, r: None)
    want = load_file(str(tmp_path / "local" / "model.safetensors"))
    got = load_file(str(tmp_path / "s3" / "model.safetensors"))
    assert all((want[k] - got[k]).abs().max() == 0 for k in want)
    with pytest.raises(FileNotFoundError, match=r"no \.tar shards under"):
        train_model(f"{s3_env}/datasets/nothing", tmp_path / "x",
                    cfg.model_copy(update={"recipe": "contrastive"}), lambda s, r: None)
