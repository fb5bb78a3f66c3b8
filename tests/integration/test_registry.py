"""MLflow registry on a real (sqlite) store: champion only when the metric improves."""

import mlflow
import numpy as np
import pandas as pd
import pytest

from mofi_core import tracking
from mofi_core.config import RegisterConfig
from mofi_core.registry import register
from mofi_core.train.run import train_supervised


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MOFI_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.fixture(scope="module")
def model_dir(tiny_world, tmp_path_factory):
    """A classifier trained a few steps on a hand-made I2E set from the tiny world."""
    from mofi_core.config import BuildConfig
    from mofi_core.curate.build import build
    from mofi_core.curate.ingest import ingest
    from mofi_core.io import tables

    layout, params, _ = tiny_world
    tmp = tmp_path_factory.mktemp("reg")
    ingest(layout.corpus_shards, tmp / "ingest", params.ingest)
    from mofi_core.evaluate.quality import read_truth

    truth = read_truth(layout.truth).to_pylist()
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard_of = dict(zip(*pq.read_table(tmp / "ingest" / "manifest.parquet",
                                       columns=["key", "shard"]).to_pydict().values(),
                        strict=True))
    for shard in sorted(set(shard_of.values())):
        rows = [{"key": t["key"], "entity_id": e, "score": 0.9} for t in truth
                for e in t["entity_ids"] if shard_of[t["key"]] == shard]
        tables.write_table(tmp / "score" / "parts" / f"{shard[:-4]}.scores.parquet",
                           pa.Table.from_pylist(rows), tables.SCORES)
    build(tmp / "ingest", tmp / "score", tmp / "i2e", BuildConfig(threshold=0.5))
    train_supervised(tmp / "i2e", tmp / "model", params.train.model_copy(update={"steps": 5}),
                     lambda s, r: None)
    return tmp / "model"


def _register(model_dir, root, value):
    with tracking.run("register", root):
        return register(model_dir, {"mofi": {"gpr_map": value}}, root, RegisterConfig())


def test_champion_moves_only_when_the_metric_improves(store, model_dir, tiny_world):
    first = _register(model_dir, store, 0.5)
    assert first["promoted"] and first["version"] == 1 and first["champion"] == 1
    worse = _register(model_dir, store, 0.4)
    assert not worse["promoted"] and worse["champion"] == 1
    better = _register(model_dir, store, 0.6)
    assert better["promoted"] and better["champion"] == 3 and better["previous_champion"] == 1

    client = mlflow.MlflowClient()
    champ = client.get_model_version_by_alias("mofi-encoder", "champion")
    assert str(champ.version) == "3"
    assert champ.tags["gpr_map"] == "0.600000" and champ.tags["promoted"] == "true"
    assert "git_commit" in champ.tags

    # the champion loads back as a pyfunc and embeds images (bytes or paths) to unit vectors
    layout = tiny_world[0]
    files = sorted(layout.gpr.glob("*.jpg"))[:2]
    model = mlflow.pyfunc.load_model("models:/mofi-encoder@champion")
    out = model.predict(pd.DataFrame({"image": [files[0].read_bytes(), None],
                                      "path": [None, str(files[1])]}))
    assert out.shape[0] == 2
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_unknown_metric_is_a_clear_error(store, model_dir):
    with pytest.raises(KeyError, match=r"register\.metric"), tracking.run("register", store):
        register(model_dir, {"mofi": {"gpr_map": 0.1}}, store, RegisterConfig(metric="nope"))


def test_logged_model_contains_no_pickle(store, model_dir):
    first = _register(model_dir, store, 0.5)
    local = mlflow.artifacts.download_artifacts(f"models:/mofi-encoder/{first['version']}")
    from pathlib import Path

    suffixes = {p.suffix for p in Path(local).rglob("*") if p.is_file()}
    assert not suffixes & {".pkl", ".pickle", ".pt", ".pth", ".bin"}
    assert ".safetensors" in suffixes
