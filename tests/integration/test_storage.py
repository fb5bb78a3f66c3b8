"""Stages against an s3:// storage root on a real S3 server: each stage runs in its own empty
folder (a machine sharing no disk with the others), fetching its inputs from and publishing its
outputs to the root; the outputs equal those of a run in one local folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mofi_core.config import apply_overrides, read_params_file
from mofi_core.io import s3
from mofi_core.io.hashing import file_sha256
from mofi_core.io.storage import Storage, StorageError, stage_io
from mofi_core.stage import execute
from mofi_core.stages import BY_NAME, STAGES
from tests.conftest import ROOT, TINY


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
    return execute(BY_NAME[stage], folder / "params.yaml", folder)


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def shared_mlflow(tmp_path, monkeypatch):
    """One tracking store for all 'machines', as a team's MLflow server would be."""
    monkeypatch.setenv("MOFI_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_stage_io_comes_from_dvc_yaml():
    io = stage_io(ROOT / "dvc.yaml", "ner")
    assert io.inputs == (("data/ingest/parts", "data/ingest", "ingest"),
                         ("data/corpus/kb.parquet", "data/corpus", "corpus"))
    assert io.outputs == ("data/ner", "metrics/ner.json")
    assert stage_io(ROOT / "dvc.yaml", "corpus").inputs == ()
    with pytest.raises(StorageError, match="no stage 'nope'"):
        stage_io(ROOT / "dvc.yaml", "nope")


def test_every_stage_runs_in_an_empty_folder_against_the_storage_root(
        s3_env, shared_mlflow, tmp_path):
    """Also the check that each stage's declared outputs cover what it writes: a folder that
    starts with nothing but params.yaml and dvc.yaml ends holding only the stage's declared
    outputs (stage table = dvc.yaml, a unit test holds them equal), what it writes outside DVC
    on purpose, and the inputs it fetched."""
    root = f"{s3_env}/team/run1"
    for spec in STAGES:
        stage = spec.name
        folder = _project(tmp_path / "machines" / stage, root)
        _run(stage, folder)
        io = stage_io(folder / "dvc.yaml", stage)
        held = {p.split("/")[0] + "/" + p.split("/")[1] if p.count("/") else p
                for p in _tree(folder) if not p.startswith((".mofi/", "mlruns/"))}
        allowed = {"params.yaml", "dvc.yaml", *io.outputs, *spec.untracked,
                   *(dep for dep, _, _ in io.inputs)}
        for path in held:
            assert any(path == a or path.startswith(a + "/") or a.startswith(path + "/")
                       for a in allowed), (stage, path)
    # ingest streamed the corpus shards instead of downloading them
    assert not (tmp_path / "machines" / "ingest" / "data" / "corpus").exists()
    register = json.loads(s3.read_bytes(f"{root}/reports/register.json"))
    assert register["version"] and register["model_name"] == "mofi-encoder"

    # the same stages in one local folder give the same curated data
    local = _project(tmp_path / "local")
    for stage in ("corpus", "ingest", "ner"):
        _run(stage, local)
    for stage, out in (("ingest", "data/ingest"), ("ner", "data/ner")):
        assert _tree(tmp_path / "machines" / stage / out) == _tree(local / out)
        manifest = Storage(root, local).read_manifest(out)
        assert {m: meta["sha256"] for m, meta in manifest.items()} == _tree(local / out)


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
