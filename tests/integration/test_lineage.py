"""Every run says which code, params and data made it, and the store is where MLflow looks."""

import os
import subprocess

import mlflow
import pytest
import yaml

from mofi_core import tracking
from mofi_core.registry import _lock, input_hashes


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"})


@pytest.fixture()
def checkout(tmp_path, monkeypatch):
    """A git checkout with params.yaml, dvc.lock and metrics committed; the project store."""
    monkeypatch.setenv("MOFI_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MOFI_PARENT_RUN_ID", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_text("train:\n  steps: 300\n  lr: 0.001\nbuild:\n  k: 2\n")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / "metrics").mkdir()
    (root / "metrics" / "train.json").write_text('{"train": {"final_loss": 1.0}}')
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "first")
    monkeypatch.chdir(tmp_path)  # not the project: nothing may land in the working folder
    yield root
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def _run_tags(root, name="train"):
    with tracking.run(name, root) as t:
        run_id = t.run_id
    return mlflow.get_run(run_id).data.tags


def test_every_run_records_the_commit_and_only_code_or_params_make_it_dirty(checkout):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True,
                          text=True, check=True).stdout.strip()
    # the pipeline rewrote its own products: still the commit's code and params
    (checkout / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (checkout / "metrics" / "train.json").write_text('{"train": {"final_loss": 0.5}}')
    tags = _run_tags(checkout)
    assert tags["mlflow.source.git.commit"] == head and tags["mofi.git_dirty"] == "false"
    assert tags["mlflow.source.git.branch"] == "main"
    assert tracking.git_commit(checkout) == head
    (checkout / "params.yaml").write_text("train:\n  steps: 12\n  lr: 0.001\nbuild:\n  k: 2\n")
    assert _run_tags(checkout)["mofi.git_dirty"] == "true"
    assert tracking.git_commit(checkout) == head + "-dirty"
    assert tracking.params_changed(checkout) == {"train.steps": "12"}


def test_the_store_is_mlflows_default_location_seen_from_the_project_root(checkout):
    experiment_id = tracking.configure(checkout)
    assert (checkout / "mlflow.db").is_file()
    exp = mlflow.get_experiment(experiment_id)
    # the UI opens a training project in its classic view, not the GenAI one
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.artifact_location == (checkout / "mlartifacts").as_uri()
    # what plain `mlflow` code run from the project root resolves to is this store
    probe = subprocess.run(
        [os.sys.executable, "-c", "import mlflow; print(mlflow.get_tracking_uri()); "
         "print([e.name for e in mlflow.search_experiments()])"],
        cwd=checkout, capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    uri, names = probe.stdout.strip().splitlines()[-2:]
    assert uri == f"sqlite:///{checkout / 'mlflow.db'}" and "'mofi'" in names


def test_an_old_store_is_moved_to_the_root_once(checkout, capsys):
    old = checkout / ".mlflow"
    old.mkdir()
    tracking.configure(checkout)  # makes mlflow.db at the root
    os.replace(checkout / "mlflow.db", old / "mlflow.db")
    tracking.configure(checkout)
    assert (checkout / "mlflow.db").is_file() and not (old / "mlflow.db").exists()
    assert "moved the MLflow store" in capsys.readouterr().out


def test_reading_commands_never_create_an_empty_store_and_say_where_they_looked(checkout,
                                                                               tmp_path):
    from typer.testing import CliRunner

    from mofi_core.cli import app

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(tracking.NoTrackingStore, match="--root PROJECT"):
        tracking.configure(elsewhere, create=False)
    assert not (elsewhere / "mlflow.db").exists()
    image = tmp_path / "q.jpg"
    image.write_bytes(b"not read")
    out = CliRunner().invoke(app, ["embed", str(image), "--root", str(elsewhere)])
    assert out.exit_code == 1
    assert "--root" in out.output and "MLFLOW_TRACKING_URI" in out.output
    # a store without the model: the same hint, not MLflow's bare "not found"
    tracking.configure(checkout)
    out = CliRunner().invoke(app, ["embed", str(image), "--root", str(checkout)])
    assert out.exit_code == 1 and "no such registered model" in out.output
    assert "MLFLOW_TRACKING_URI" in out.output


def test_stages_of_a_dvc_experiment_nest_under_a_run_named_for_it(checkout, monkeypatch):
    (checkout / "params.yaml").write_text("train:\n  steps: 12\n  lr: 0.001\nbuild:\n  k: 2\n")
    monkeypatch.setenv("DVC_EXP_NAME", "short-train")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "HEAD")
    with tracking.run("build", checkout) as a:
        pass
    with tracking.run("train", checkout) as b:
        pass
    client = mlflow.MlflowClient()
    parents = {client.get_run(r).data.tags["mlflow.parentRunId"] for r in (a.run_id, b.run_id)}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.info.run_name == "short-train"
    assert parent.data.tags["mofi.kind"] == "dvc-experiment"
    assert parent.data.params == {"override.train.steps": "12"}
    assert "params.yaml" in {f.path for f in client.list_artifacts(parent.info.run_id)}


def test_version_inputs_are_every_data_dep_of_its_train_instance_and_evaluate(tmp_path):
    lock = {"schema": "2.0", "stages": {
        "train@multitask": {"deps": [{"path": "data/i2e", "md5": "a.dir"},
                                     {"path": "mofi_core/train", "md5": "code.dir"}]},
        "train@supervised": {"deps": [{"path": "data/other", "md5": "x.dir"}]},
        "evaluate": {"deps": [{"path": "data/benchmark", "md5": "b.dir"},
                              {"path": "models", "md5": "m.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert input_hashes(_lock(tmp_path), ("train@multitask", "evaluate")) == {
        "input.data/i2e": "a.dir", "input.data/benchmark": "b.dir", "input.models": "m.dir"}


def test_datasets_carry_the_dvc_hash_as_digest(checkout, tmp_path):
    from mofi_core.io.hashing import dvc_hash_of_path

    data = tmp_path / "i2e"
    (data / "sub").mkdir(parents=True)
    (data / "labels.parquet").write_bytes(b"x" * 10)
    (data / "sub" / "stats.json").write_text("{}")
    with tracking.run("train", checkout) as t:
        t.log_dataset(data, "i2e", "training")
    run = mlflow.get_run(t.run_id)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "i2e" and inp.dataset.digest == dvc_hash_of_path(data)
    assert inp.dataset.digest.endswith(".dir")
    assert {tag.value for tag in inp.tags} == {"training"}
