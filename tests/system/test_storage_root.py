"""Every stage against an S3 storage root (a real SeaweedFS server on 127.0.0.1), each in an empty
folder as a machine that shares no disk would run it."""

from __future__ import annotations

import json

import pytest

from mofi_core.io import s3
from mofi_core.io.storage import (
    Storage,
    stage_io,
)
from mofi_core.stages import STAGES
from tests.integration.test_storage import _lookup, _project, _run, _tree


@pytest.fixture()
def shared_mlflow(tmp_path, monkeypatch):
    """One tracking store for all 'machines', as a team's MLflow server would be."""
    monkeypatch.setenv("MOFI_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


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
        io = stage_io(stage, _lookup(folder))
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
    assert register["model_name"] == "mofi-encoder"
    assert set(register["candidates"]) == {"supervised", "multitask"}  # TINY's train.recipes

    # the same stages in one local folder give the same curated data
    local = _project(tmp_path / "local")
    for stage in ("corpus", "kb", "ingest", "ner"):
        _run(stage, local)
    for stage, out in (("ingest", "data/ingest"), ("ner", "data/ner")):
        assert _tree(tmp_path / "machines" / stage / out) == _tree(local / out)
        manifest = Storage(root, local).read_manifest(out)
        assert {m: meta["sha256"] for m, meta in manifest.files.items()} == _tree(local / out)
        assert manifest.dvc_md5 == Storage(root, local).local_dvc_hash(out)
