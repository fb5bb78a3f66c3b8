"""MLflow registry on a real (sqlite) store: champion only when the metric improves."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from mofi_core import tracking
from mofi_core.config.register import RegisterConfig
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


def _variant(model_dir, root, tag):
    """A copy of the model folder with different bytes (a new model as far as the registry
    is concerned)."""
    import shutil

    out = root / f"variant-{tag}"
    if not out.exists():
        shutil.copytree(model_dir, out)
        (out / "note.txt").write_text(str(tag))
    return out


def _register(model_dir, root, value, **cfg):
    with tracking.run("register", root):
        return register(model_dir, {"multitask": {"gpr_map": value}, "baseline": {"gpr_map": 0.3}},
                        root, RegisterConfig(**cfg))


def test_challenger_becomes_champion_only_by_the_margin(store, model_dir, tiny_world):
    first = _register(model_dir, store, 0.5, margin=0.05)
    assert first["promoted"] and first["version"] == 1 and first["champion"] == 1
    worse = _register(_variant(model_dir, store, 2), store, 0.4, margin=0.05)
    assert not worse["promoted"] and worse["champion"] == 1
    # better, but not by the margin
    close = _register(_variant(model_dir, store, 3), store, 0.54, margin=0.05)
    assert not close["promoted"] and close["champion"] == 1
    better = _register(_variant(model_dir, store, 4), store, 0.6, margin=0.05)
    assert better["promoted"] and better["champion"] == 4 and better["previous_champion"] == 1

    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("mofi-encoder", "challenger").version) == "4"
    kept = client.get_model_version("mofi-encoder", "3")
    assert kept.tags["promoted"] == "false" and kept.tags["champion_before"] == "1"
    assert kept.tags["champion_before_gpr_map"] == "0.500000"
    assert "0.540000 <= champion 0.500000 + margin 0.05" in kept.tags["decision"]
    champ = client.get_model_version_by_alias("mofi-encoder", "champion")
    assert str(champ.version) == "4"
    assert champ.tags["gpr_map"] == "0.600000" and champ.tags["promoted"] == "true"
    assert "git_commit" in champ.tags
    assert "## Known limits" in champ.description and "| gpr_map | 0.6000 | 0.3000 |" in \
        champ.description


def test_champion_pyfunc_embeds_like_the_training_side_encoder(store, model_dir, tiny_world):
    from mofi_core.evaluate.embed import embed_files
    from mofi_core.models.artifact import LoadedModel

    _register(model_dir, store, 0.5)
    layout = tiny_world[0]
    files = sorted(layout.gpr.glob("*.jpg"))[:3]
    # paths are read only inside a folder the model is given (bytes always work)
    model = mlflow.pyfunc.load_model("models:/mofi-encoder@champion",
                                     model_config={"allowed_root": str(layout.gpr)})
    out = model.predict(pd.DataFrame({"image": [files[0].read_bytes(), None, None],
                                      "path": [None, str(files[1]), files[2].name]}))
    assert out.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    direct = embed_files(LoadedModel.load(model_dir, torch.device("cpu")), files, batch_size=8,
                         num_workers=0)
    np.testing.assert_allclose(out, direct, atol=1e-5)


def test_mofi_embed_and_search_use_the_registered_model(store, model_dir, tiny_world, tmp_path):
    from typer.testing import CliRunner

    from mofi_core.cli import app

    _register(model_dir, store, 0.5)
    gpr = tiny_world[0].gpr
    query = sorted(gpr.glob("*.jpg"))[0]
    runner = CliRunner()
    done = runner.invoke(app, ["embed", str(query), "--out", str(tmp_path / "e.npy"),
                               "--root", str(store)])
    assert done.exit_code == 0, done.output
    vec = np.load(tmp_path / "e.npy", allow_pickle=False)
    assert vec.shape[0] == 1 and abs(np.linalg.norm(vec) - 1) < 1e-5
    done = runner.invoke(app, ["search", str(query), "--folder", str(gpr), "--k", "3",
                               "--root", str(store)])
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0] == str(query) and len(lines) == 4 and str(query) not in "".join(lines[1:])
    scores = [float(x.split()[1]) for x in lines[1:]]
    assert scores == sorted(scores, reverse=True)
    bad = runner.invoke(app, ["embed", str(query), "--model", "nowhere", "--root", str(store)])
    assert bad.exit_code == 1 and "neither a model folder" in bad.output


def test_unknown_metric_is_a_clear_error(store, model_dir):
    with pytest.raises(KeyError, match=r"register\.metric"), tracking.run("register", store):
        register(model_dir, {"multitask": {"gpr_map": 0.1}}, store, RegisterConfig(metric="nope"))


def test_logged_model_contains_no_pickle(store, model_dir):
    first = _register(model_dir, store, 0.5)
    run_id = mlflow.MlflowClient().get_model_version("mofi-encoder", "1").run_id
    card = mlflow.artifacts.load_text(f"runs:/{run_id}/model_card_multitask.md")
    assert card.startswith("# mofi-encoder: mofi-tiny (supervised)")
    local = mlflow.artifacts.download_artifacts(f"models:/mofi-encoder/{first['version']}")
    from pathlib import Path

    suffixes = {p.suffix for p in Path(local).rglob("*") if p.is_file()}
    assert not suffixes & {".pkl", ".pickle", ".pt", ".pth", ".bin"}
    assert ".safetensors" in suffixes


def test_registering_the_same_model_again_reuses_its_version(store, model_dir):
    first = _register(model_dir, store, 0.5)
    again = _register(model_dir, store, 0.5)
    assert again == first
    client = mlflow.MlflowClient()
    assert len(client.search_model_versions("name = 'mofi-encoder'")) == 1


def test_a_registration_killed_before_its_decision_is_completed_not_duplicated(store,
                                                                             model_dir):
    from mofi_core.registry import model_sha256

    first = _register(model_dir, store, 0.5)
    model = _variant(model_dir, store, "killed")
    client = mlflow.MlflowClient()
    # what a process killed right after creating the version leaves: hash tag, no decision
    v = client.create_model_version("mofi-encoder", source=model.as_uri(),
                                    tags={"model_sha256": model_sha256(model)})
    assert "decision" not in client.get_model_version("mofi-encoder", v.version).tags
    done = _register(model, store, 0.7)
    assert done["version"] == int(v.version) == 2 and done["promoted"]
    assert done["previous_champion"] == first["version"]
    assert len(client.search_model_versions("name = 'mofi-encoder'")) == 2
    assert str(client.get_model_version_by_alias("mofi-encoder", "champion").version) == "2"


def test_the_served_model_reads_no_file_outside_its_allowed_root(store, model_dir, tiny_world,
                                                                 tmp_path):
    from mofi_core.serving.encoder import PathNotAllowed

    _register(model_dir, store, 0.5)
    layout = tiny_world[0]
    image = sorted(layout.gpr.glob("*.jpg"))[0]
    default = mlflow.pyfunc.load_model("models:/mofi-encoder@champion")
    with pytest.raises(PathNotAllowed, match="'path' input is off"):
        default.predict(pd.DataFrame({"path": [str(image)]}))
    assert default.predict(pd.DataFrame({"image": [image.read_bytes()]})).shape[0] == 1
    allowed = tmp_path / "served"
    allowed.mkdir()
    (allowed / "ok.jpg").write_bytes(image.read_bytes())
    (allowed / "link.jpg").symlink_to(image)  # points outside the allowed folder
    model = mlflow.pyfunc.load_model("models:/mofi-encoder@champion",
                                     model_config={"allowed_root": str(allowed)})
    assert model.predict(pd.DataFrame({"path": ["ok.jpg"]})).shape[0] == 1
    for escape in ("../" * 8 + str(image).lstrip("/"), str(image), "link.jpg",
                   "sub/../../" + image.name):
        with pytest.raises(PathNotAllowed, match="outside the model's allowed root"):
            model.predict(pd.DataFrame({"path": [escape]}))


def _register_on(model_dir, root, value, benchmark="bench-a", **cfg):
    with tracking.run("register", root):
        return register(model_dir, {"multitask": {"gpr_map": value}, "baseline": {"gpr_map": 0.3},
                                    "benchmark": {"digest": benchmark}},
                        root, RegisterConfig(**cfg))


def _champion():
    return int(mlflow.MlflowClient().get_model_version_by_alias("mofi-encoder",
                                                                "champion").version)


def test_reregistering_old_bytes_never_moves_the_champion_back(store, model_dir):
    """The sequence a user hit: main registers v1 (champion); an experiment makes a better v2
    (champion); back on main, `dvc repro` registers v1's bytes again. v2 stays champion."""
    v1 = _register_on(model_dir, store, 0.40)
    assert (v1["version"], v1["promoted"], _champion()) == (1, True, 1)
    v2 = _register_on(_variant(model_dir, store, "exp"), store, 0.50)
    assert (v2["version"], v2["promoted"], _champion()) == (2, True, 2)
    again = _register_on(model_dir, store, 0.40)
    assert again == v1 and _champion() == 2  # v1's decision is history, reported as it was
    client = mlflow.MlflowClient()
    assert len(client.search_model_versions("name = 'mofi-encoder'")) == 2
    # an equal number is not better: the champion moves only to a strictly better version
    tie = _register_on(_variant(model_dir, store, "tie"), store, 0.50)
    assert not tie["promoted"] and _champion() == 2


def test_numbers_from_another_benchmark_never_promote(store, model_dir):
    _register_on(model_dir, store, 0.40, benchmark="bench-a")
    other = _register_on(_variant(model_dir, store, "other"), store, 0.90, benchmark="bench-b")
    assert not other["promoted"] and _champion() == 1
    assert "not comparable" in other["decision"] and "mofi promote" in other["decision"]
    tags = mlflow.MlflowClient().get_model_version("mofi-encoder", "2").tags
    assert tags["benchmark_digest"] == "bench-b"


def test_promote_by_hand_with_a_reason(store, model_dir, monkeypatch):
    from typer.testing import CliRunner

    from mofi_core.cli import app

    _register_on(model_dir, store, 0.40)
    _register_on(_variant(model_dir, store, "p2"), store, 0.50)
    assert _champion() == 2
    runner = CliRunner()
    (store / "params.yaml").write_text("register:\n  model_name: mofi-encoder\n")
    args = ["--params", str(store / "params.yaml"), "--root", str(store)]
    no_reason = runner.invoke(app, ["promote", "1", "--reason", " ", *args])
    assert no_reason.exit_code == 1 and "--reason" in no_reason.output and _champion() == 2
    missing = runner.invoke(app, ["promote", "7", "--reason", "x", *args])
    assert missing.exit_code == 1 and "no version 7" in missing.output
    done = runner.invoke(app, ["promote", "1", "--reason", "v2 fails on night photos", *args])
    assert done.exit_code == 0, done.output
    assert "champion is version 1 (was 2)" in done.output and _champion() == 1
    tags = mlflow.MlflowClient().get_model_version("mofi-encoder", "1").tags
    assert tags["promoted_by_hand"] == "v2 fails on night photos"
    assert tags["promoted_by_hand_from"] == "2"
    # registering v2's bytes again does not undo the choice
    _register_on(_variant(model_dir, store, "p2"), store, 0.50)
    assert _champion() == 1


def test_the_version_is_registered_from_the_train_run_that_logged_it(store, model_dir):
    from mofi_core.serving.logged import log_encoder

    with tracking.run("train", store) as train_run:
        info = log_encoder(model_dir)
    done = _register_on(model_dir, store, 0.5)
    version = mlflow.MlflowClient().get_model_version("mofi-encoder", str(done["version"]))
    assert version.run_id == train_run.run_id
    assert version.tags["logged_in"] == f"run {train_run.run_id}"
    assert version.source.endswith(info.model_id) or info.model_id in version.source
    linked = mlflow.get_logged_model(info.model_id).metrics
    assert {m.key for m in linked} >= {"eval.multitask.gpr_map", "eval.baseline.gpr_map"}


def test_an_imported_model_can_be_registered_as_a_candidate(store, tmp_path):
    """Weights brought in with `mofi model import` join register's candidates when
    register.extra_models is on; the version carries recipe 'imported'."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from mofi_core.config.load import apply_overrides, parse_params
    from mofi_core.io.layout import Layout
    from mofi_core.models.factory import arch_config, build_clip
    from mofi_core.models.pretrained import import_clip
    from mofi_core.registry import candidate_models

    torch.manual_seed(5)
    clip = build_clip(arch_config("mofi-tiny"))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    folder = import_clip("mofi-tiny", tmp_path / "w.safetensors", tmp_path / "models" / "mine")

    def ctx(on):  # the real params object, as the stage runner passes it
        params = parse_params(apply_overrides({}, {
            "train.recipes": ["multitask"], "evaluate.extra_models": ["mine"],
            "register.extra_models": on}))
        return SimpleNamespace(layout=Layout(tmp_path), params=params)

    assert list(candidate_models(ctx(False))) == ["multitask"]
    assert candidate_models(ctx(True)) == {"multitask": Layout(tmp_path).model("multitask"),
                                           "mine": folder}
    with tracking.run("register", store):
        decided = register(folder, {"mine": {"gpr_map": 0.42}, "baseline": {"gpr_map": 0.3}},
                           store, RegisterConfig(), name="mine")
    version = mlflow.MlflowClient().get_model_version("mofi-encoder", str(decided["version"]))
    assert version.tags["recipe"] == "imported" and version.tags["candidate"] == "mine"
    assert decided["promoted"]  # the first version of the model always becomes champion


def test_a_run_completing_a_killed_one_writes_the_same_candidate_records(store, model_dir):
    """Two candidates, the second the best: a run killed after the best one became champion
    (before register.json was written) is re-run. The first candidate's record must still
    say what was decided for it (no champion yet), not today's champion."""
    from mofi_core.registry import register_candidates

    models = {"supervised": _variant(model_dir, store, "sup"), "multitask": model_dir}
    metrics = {"supervised": {"gpr_map": 0.40}, "multitask": {"gpr_map": 0.45},
               "baseline": {"gpr_map": 0.3}, "benchmark": {"digest": "bench-a"}}
    with tracking.run("register", store):
        first = register_candidates(models, metrics, store, RegisterConfig())
    assert first["best"] == "multitask" and first["champion"] == 2 and _champion() == 2
    sup = first["candidates"]["supervised"]
    assert (sup["version"], sup["promoted"], sup["champion"]) == (1, False, None)
    assert "not this run's best" in sup["decision"]
    with tracking.run("register", store):
        again = register_candidates(models, metrics, store, RegisterConfig())
    assert again == first
