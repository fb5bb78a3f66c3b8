"""MLflow registry on a real (sqlite) store: champion only when the metric improves."""

import mlflow
import numpy as np
import pandas as pd
import pytest

from mofi_core import tracking
from mofi_core.config import RegisterConfig
from mofi_core.registry import register
from mofi_core.train.run import train_model


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MOFI_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.fixture(scope="module")
def model_dir(truth_i2e, tmp_path_factory):
    """A classifier trained a few steps on the truth-labelled I2E set."""
    _, params, i2e = truth_i2e
    out = tmp_path_factory.mktemp("reg") / "model"
    train_model(i2e, out, params.train.model_copy(update={"steps": 5}), lambda s, r: None)
    return out


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
