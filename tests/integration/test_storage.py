"""Stages against an s3:// storage root on a real S3 server: each stage runs in its own empty
folder (a machine sharing no disk with the others), fetching its inputs from and publishing its
outputs to the root; the outputs equal those of a run in one local folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from mofi_core.config.load import apply_overrides, load_params, read_params_file
from mofi_core.io import s3
from mofi_core.io.hashing import dvc_hash, file_sha256
from mofi_core.io.storage import (
    FORMAT,
    StageIO,
    StageStorage,
    Storage,
    StorageError,
    dvc_hash_of_manifest,
    lock_decision,
    stage_io,
)
from mofi_core.runner import execute
from mofi_core.stages import BY_NAME
from tests.conftest import BIN, ROOT, TINY
from tests.integration.test_s3 import api_calls
from tests.ports import free_port


def _project(folder: Path, storage_root: str = "") -> Path:
    """An empty project folder: params.yaml (tiny world) and dvc.yaml, nothing else."""
    folder.mkdir(parents=True)
    raw = apply_overrides(read_params_file(ROOT / "params.yaml"),
                          {**TINY, "runtime.corpus.workers": 1, "runtime.ingest.workers": 1,
                           "runtime.ner.workers": 1, "runtime.validate.data_docs": False})
    raw["storage"] = {"root": storage_root}
    (folder / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    return folder


def _run(stage: str, folder: Path) -> dict:
    """Run ``stage`` there; a foreach stage (train): each instance its params list names."""
    spec = BY_NAME[stage]
    if not spec.foreach:
        return execute(spec, folder / "params.yaml", folder)
    items = getattr(load_params(folder / "params.yaml").section(spec.section), spec.foreach)
    return {i: execute(spec.instance(i), folder / "params.yaml", folder) for i in items}


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _lookup(folder=ROOT):
    return load_params(folder / "params.yaml").value


def test_stage_io_comes_from_the_stage_table():
    io = stage_io("ner", _lookup())
    assert io.inputs == (("data/ingest/parts", "data/ingest", "ingest"),
                         ("data/kb", "data/kb", "kb"))
    assert io.outputs == ("data/ner", "metrics/ner.json")
    assert stage_io("corpus", _lookup()).inputs == ()
    # ${kb.path} is read from params.yaml, as DVC reads it: the demo KB, made by corpus
    assert stage_io("kb", _lookup()).inputs == (
        ("data/corpus/kb.parquet", "data/corpus", "corpus"),)
    with pytest.raises(StorageError, match="no stage 'nope'"):
        stage_io("nope", _lookup())


def test_publish_is_incremental_and_fetch_mirrors_the_publication(s3_env, tmp_path):
    root = f"{s3_env}/inc"
    a = tmp_path / "a"
    (a / "data" / "x" / "sub").mkdir(parents=True)
    for name, text in (("one.txt", "1"), ("two.txt", "2"), ("sub/three.txt", "3")):
        (a / "data" / "x" / name).write_text(text)
    store = Storage(root, a)
    first = store.publish("data/x")
    assert (first.transferred, first.unchanged) == (3, 0)
    again = store.publish("data/x")
    assert (again.transferred, again.unchanged, again.removed) == (0, 3, 0)
    (a / "data" / "x" / "two.txt").write_text("2b")
    (a / "data" / "x" / "one.txt").unlink()
    changed = store.publish("data/x")
    assert (changed.transferred, changed.unchanged, changed.removed) == (1, 1, 1)
    assert not s3.exists(f"{root}/data/x/one.txt")

    b = tmp_path / "b"
    (b / "data" / "x").mkdir(parents=True)
    (b / "data" / "x" / "stale.txt").write_text("left over")
    got = Storage(root, b).fetch("data/x", "data/x", "maker")
    assert (got.transferred, got.removed) == (2, 1)
    assert _tree(b / "data" / "x") == _tree(a / "data" / "x")
    assert Storage(root, b).fetch("data/x/sub", "data/x", "maker").unchanged == 1


def test_a_missing_or_tampered_publication_is_a_clear_error(s3_env, tmp_path):
    root = f"{s3_env}/bad"
    folder = _project(tmp_path / "p", root)
    with pytest.raises(StorageError, match=r"data/ingest has not been published.*run stage "
                                           r"'ingest' with the same storage root"):
        _run("ner", folder)
    a = tmp_path / "a"
    (a / "out").mkdir(parents=True)
    (a / "out" / "f.bin").write_bytes(b"good")
    Storage(root, a).publish("out")
    s3.write_bytes(f"{root}/out/f.bin", b"evil")  # changed behind the manifest's back
    with pytest.raises(StorageError, match="SHA-256"):
        Storage(root, tmp_path / "b").fetch("out", "out", "maker")
    assert not (tmp_path / "b" / "out" / "f.bin").exists()  # nothing half-trusted is left
    with pytest.raises(StorageError, match="s3://bucket/prefix"):
        Storage("/local/path", a)


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def test_publish_restores_objects_deleted_or_overwritten_behind_the_manifest(s3_env, tmp_path):
    """The listing (size + ETag, one request per 1000 objects, no HEAD per file) shows what the
    store really holds: a deleted object and one overwritten with other bytes of the same size
    are uploaded again, and a fetch elsewhere gets the right bytes."""
    root = f"{s3_env}/verify"
    a = tmp_path / "a"
    files = {"one.bin": b"1" * 100, "two.bin": b"2" * 100, "sub/three.bin": b"3" * 100}
    _write(a / "out", files)
    store = Storage(root, a)
    assert store.publish("out").transferred == 3
    manifest = store.read_manifest("out")
    assert manifest.format == FORMAT == 2
    assert {m: meta["etag"] for m, meta in manifest.files.items()} == {
        m: hashlib.md5(data).hexdigest() for m, data in files.items()}
    assert manifest.dvc_md5 == store.local_dvc_hash("out") == dvc_hash_of_manifest(manifest)

    with api_calls() as calls:
        again = store.publish("out")
    assert (again.transferred, again.unchanged, again.repaired) == (0, 3, 0)
    ops = [op for op, _ in calls]
    assert ops.count("ListObjectsV2") == 1 and ops.count("HeadObject") <= 1  # the manifest's
    assert "PutObject" in ops and "DeleteObjects" not in ops  # the manifest; nothing stale

    s3.delete(f"{root}/out/one.bin")
    s3.write_bytes(f"{root}/out/sub/three.bin", b"X" * 100)  # same size, other bytes
    fixed = store.publish("out")
    assert (fixed.transferred, fixed.unchanged, fixed.repaired) == (2, 1, 2)
    assert "2 restored" in str(fixed)
    got = Storage(root, tmp_path / "b").fetch("out", "out", "maker")
    assert got.transferred == 3
    assert _tree(tmp_path / "b" / "out") == _tree(a / "out")


def test_a_format_1_manifest_is_verified_by_size_and_etag_then_rewritten(s3_env, tmp_path):
    """A manifest from before ETags were recorded: a file whose object has its size and, as
    an object written by one PUT does, its MD5 as ETag, is not uploaded again; any other is."""
    root = f"{s3_env}/old"
    a = tmp_path / "a"
    _write(a / "out", {"keep.bin": b"k" * 50, "changed.bin": b"c" * 50})
    store = Storage(root, a)
    store.publish("out")
    old = store.read_manifest("out")
    s3.write_bytes(store.manifest_url("out"), json.dumps({"format": 1, "output": "out", "files": {
        m: {"size": meta["size"], "sha256": meta["sha256"]}
        for m, meta in old.files.items()}}).encode())
    assert Storage(root, tmp_path / "b").fetch("out", "out", "maker").transferred == 2
    s3.write_bytes(f"{root}/out/changed.bin", b"Z" * 50)  # same size, other bytes
    stats = store.publish("out")
    assert (stats.transferred, stats.unchanged) == (1, 1)
    assert store.read_manifest("out").format == 2
    assert Storage(root, tmp_path / "c").fetch("out", "out", "maker").transferred == 2
    assert _tree(tmp_path / "c" / "out") == _tree(a / "out")


def test_publish_uploads_in_parallel_and_deletes_stale_objects_in_one_request(
        s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MOFI_S3_CONCURRENCY", "4")
    root = f"{s3_env}/par"
    a = tmp_path / "a"
    _write(a / "out", {f"f{i:03d}.txt": str(i).encode() for i in range(40)})
    store = Storage(root, a)
    with api_calls() as calls:
        store.publish("out")
    uploads = [thread for op, thread in calls if op == "PutObject"]
    assert len(uploads) == 41 and len(set(uploads)) > 1  # 40 files on threads + the manifest
    s3.write_bytes(f"{root}/out/.f000.txt.tmp-1-abcd", b"left by the old upload scheme")
    for p in sorted((a / "out").glob("*"))[:30]:
        p.unlink()
    with api_calls() as calls:
        stats = store.publish("out")
    assert stats.removed == 31  # 30 files and the leftover temporary key
    assert [op for op, _ in calls].count("DeleteObjects") == 1
    assert len(_objects_under(f"{root}/out/")) == 10
    with api_calls() as calls:
        got = Storage(root, tmp_path / "b").fetch("out", "out", "maker")
    assert got.transferred == 10
    assert len({thread for op, thread in calls if op == "GetObject"}) > 1


def _objects_under(prefix: str) -> list[str]:
    return [u for u, _ in s3.list_objects(prefix)]


def test_temporaries_are_neither_published_nor_hashed(s3_env, tmp_path):
    root = f"{s3_env}/tmps"
    a = tmp_path / "a"
    real = {"data.bin": b"d", "sub/more.bin": b"m"}
    _write(a / "out", {**real, ".data.bin.tmp-123-deadbeef": b"partial",
                       ".fetch-abc.tar": b"partial", ".mofi-probe-x1": b"",
                       "sub/.mofi-upload-q": b"partial",
                       ".sub.tmp-9-cafe/inside.bin": b"a temporary folder"})
    store = Storage(root, a)
    store.publish("out")
    assert sorted(store.read_manifest("out").files) == sorted(real)
    assert store.local_dvc_hash("out") == dvc_hash(
        {m: hashlib.md5(d).hexdigest() for m, d in real.items()})
    assert _objects_under(f"{root}/out/") == [f"{root}/out/{m}" for m in sorted(real)]


def test_dvc_hash_equals_what_dvc_records_in_dvc_lock(tmp_path):
    """Real DVC writes dvc.lock for a stage with a one-file output and a nested folder (a
    non-ASCII name, an empty folder and mofi's temporaries in it); our hashes are DVC's."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(ROOT / ".dvcignore", proj / ".dvcignore")
    make = (
        "from pathlib import Path\n"
        "files = {'out/a.txt': 'a\\n', 'out/sub/b.bin': 'b', 'out/sub/deeper/c.txt': 'c\\r\\n',"
        " 'out/\\u00fcn\\u00efcode.txt': 'u', 'out/a.txt.later': 'z', 'single.json': '{}',"
        " 'out/.x.tmp-1-ab': 'tmp', 'out/sub/.fetch-1': 'tmp', 'out/.mofi-probe-2': '',"
        " 'out/.mofi-upload-3': 'tmp'}\n"
        "for name, text in files.items():\n"
        "    Path(name).parent.mkdir(parents=True, exist_ok=True)\n"
        "    Path(name).write_bytes(text.encode())\n"
        "Path('out/empty').mkdir()\n")
    (proj / "make.py").write_text(make, encoding="utf-8")
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": {
        "cmd": f"{BIN / 'python'} make.py", "deps": ["make.py"],
        "outs": ["out", "single.json"]}}}), encoding="utf-8")
    for cmd in (["dvc", "init", "--no-scm", "-q"], ["dvc", "repro", "-q"]):
        subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=proj, check=True,
                       capture_output=True, timeout=120)
    lock = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]["make"]["outs"]
    recorded = {o["path"]: o["md5"] for o in lock}
    store = Storage("s3://unused/x", proj)
    assert recorded["out"].endswith(".dir")
    assert store.local_dvc_hash("out") == recorded["out"]
    assert store.local_dvc_hash("single.json") == recorded["single.json"]


@pytest.mark.parametrize(("locked", "published", "local", "in_dvc", "action"), [
    (None, "p", "l", True, "fetch"),  # no dvc.lock record: the publication
    ("p", "p", "x", True, "fetch"),  # the publication is dvc.lock's version
    ("l", "p", "l", True, "republish"),  # DVC restored the working copy without running
    ("l", "p", "l", False, "refuse"),  # the same by hand: the user chooses
    ("l", None, "l", False, "refuse"),  # a format-1 publication has no DVC hash
    ("l", "p", None, True, "fetch-note"),  # a fresh machine: the publication wins
    ("l", "p", "x", True, "fetch-note"),  # the copy here is neither
    ("l", "p", "p", False, "fetch-note"),  # the copy here is the publication already
])
def test_lock_decision_table(locked, published, local, in_dvc, action):
    assert lock_decision(locked, published, local, in_dvc) == action


def _lock(folder: Path, stage: str, out: str, md5: str) -> None:
    (folder / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {stage: {
        "cmd": f"mofi {stage}", "outs": [{"path": out, "hash": "md5", "md5": md5}]}}}))


def test_an_input_dvc_restored_without_running_its_stage_wins_over_the_publication(
        s3_env, tmp_path, monkeypatch, capsys):
    """The publication holds version 2 of models/m; here, dvc.lock and the working copy hold
    version 1 (DVC restored it from its run cache). Inside a DVC stage command version 1 is
    re-published and used; by hand the fetch is refused; with the copy here missing or neither
    version, the publication is fetched, with a note."""
    root = f"{s3_env}/lock"
    v1, v2 = {"model.bin": b"steps=150"}, {"model.bin": b"steps=140"}
    other = tmp_path / "other"
    _write(other / "models" / "m", v2)
    Storage(root, other).publish("models/m", "train")
    here = tmp_path / "here"
    _write(here / "models" / "m", v1)
    store = Storage(root, here)
    h1, h2 = store.local_dvc_hash("models/m"), Storage(root, other).local_dvc_hash("models/m")
    _lock(here, "train", "models/m", h1)

    monkeypatch.delenv("DVC_STAGE", raising=False)
    with pytest.raises(StorageError) as err:
        store.fetch("models/m", "models/m", "train")
    text = str(err.value)
    assert "\n" not in text and h1[:10] in text and h2[:10] in text
    assert "`mofi storage push train`" in text and "dvc commit train" in text
    assert (here / "models" / "m" / "model.bin").read_bytes() == b"steps=150"

    monkeypatch.setenv("DVC_STAGE", "evaluate")
    stats = store.fetch("models/m", "models/m", "train")
    assert "re-published" in str(stats)
    assert "re-publishing the working copy" in capsys.readouterr().out
    assert (here / "models" / "m" / "model.bin").read_bytes() == b"steps=150"
    assert store.read_manifest("models/m").dvc_md5 == h1
    store.fetch("models/m", "models/m", "train")  # agree now: a plain, silent fetch
    assert capsys.readouterr().out == ""

    Storage(root, other).publish("models/m", "train")  # version 2 again
    for local in (None, b"neither"):
        shutil.rmtree(here / "models")
        if local is not None:
            _write(here / "models" / "m", {"model.bin": local})
        assert store.fetch("models/m", "models/m", "train").transferred == 1
        assert "using the publication" in capsys.readouterr().out
        assert (here / "models" / "m" / "model.bin").read_bytes() == b"steps=140"


def test_a_failed_publish_names_the_stage_the_output_and_how_to_republish(
        s3_env, tmp_path, monkeypatch):
    root = f"{s3_env}/down"
    ws = tmp_path / "ws"
    _write(ws / "models" / "mofi", {"model.bin": b"weights"})
    store = StageStorage(Storage(root, ws), StageIO("train", (), ("models/mofi",)))
    port = free_port()  # nobody listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MOFI_S3_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError) as err:
        store.push()
    text = str(err.value)
    assert "\n" not in text
    for part in ("stage 'train'", "output models/mofi", f"{root}/models/mofi",
                 f"endpoint http://127.0.0.1:{port}", "complete in the working copy",
                 "`mofi storage push train` when the store is back"):
        assert part in text, part
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text


def test_storage_commands_create_buckets_and_push_and_pull(s3_server, s3_env, tmp_path,
                                                           monkeypatch):
    from typer.testing import CliRunner

    from mofi_core.cli import app

    runner = CliRunner()
    name = f"mofi-cli-{uuid.uuid4().hex[:8]}"
    first = runner.invoke(app, ["storage", "create-bucket", f"s3://{name}/runs", s3_env])
    assert first.exit_code == 0, first.output
    assert f"s3://{name}: created" in first.output and f"{s3_env}: exists already" in first.output
    again = runner.invoke(app, ["storage", "create-bucket", f"s3://{name}"])
    assert again.exit_code == 0 and "exists already" in again.output

    folder = _project(tmp_path / "p", f"s3://{name}/runs")
    (folder / "metrics").mkdir()
    (folder / "metrics" / "register.json").write_text("{}")
    (folder / "reports").mkdir()
    (folder / "reports" / "register.json").write_text('{"version": "1"}')
    pushed = runner.invoke(app, ["storage", "push", "register", "--root", str(folder),
                                 "--params", str(folder / "params.yaml")])
    assert pushed.exit_code == 0, pushed.output
    assert "register: push reports/register.json" in pushed.output
    assert s3.read_bytes(f"s3://{name}/runs/reports/register.json") == b'{"version": "1"}'

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MOFI_S3_MAX_ATTEMPTS", "1")
    down = runner.invoke(app, ["storage", "create-bucket", "--wait", "1", f"s3://{name}"])
    assert down.exit_code == 1
    assert "S3 server is up" in down.output and "Traceback" not in down.output
