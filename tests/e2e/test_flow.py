"""The whole pipeline: Prefect flow `mofi` -> one task per DVC stage -> MLflow runs and registry."""

import json
import math
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from flows.pipeline import stage_order


def _declared_outputs(root):
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for s in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in s.get(kind, []):
                yield entry if isinstance(entry, str) else next(iter(entry))


def _statuses(stdout):
    return dict(re.findall(r"^  ([\w@]+)\s+(ran|skipped)\s", stdout, flags=re.M))


def _dvc_experiments(project):
    """``dvc exp show``: experiment name -> its params, metrics... as DVC reports them."""
    shown = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    return {rev["name"]: rev["data"] for base in shown for exp in base.get("experiments") or []
            for rev in exp["revs"]}


# what train.steps changes (dvc.yaml: each train@<recipe>; evaluate <- models; report <-
# metrics/evaluate.json; register <- models + metrics/evaluate.json)
TRAINS = {"train@supervised", "train@multitask"}  # tests/conftest.py TINY: train.recipes
AFTER_TRAIN = {*TRAINS, "evaluate", "report", "register"}


def test_first_run_runs_every_stage_and_writes_every_output(project, first_run):
    order = stage_order(project.root / "dvc.yaml")
    assert _statuses(first_run.stdout) == {s: "ran" for s in order}
    missing = [p for p in _declared_outputs(project.root) if not (project.root / p).exists()]
    assert missing == []
    # decontam found the world's planted near-copies and no candidate's I2E set holds them
    import pyarrow.parquet as pq

    dropped = set(pq.read_table(project.root / "data/decontam/dropped.parquet")["key"]
                  .to_pylist())
    planted = json.loads((project.root / "data/truth/planted.json").read_text())
    assert len(dropped & {p["key"] for p in planted}) >= 6
    labelled = set(pq.read_table(project.root / "data/i2e/labels.parquet")["key"].to_pylist())
    assert labelled and not dropped & labelled
    assert "planted near-copies caught: " in (project.root / "reports/quality.md").read_text(
        ).lower()
    ev = json.loads((project.root / "metrics" / "evaluate.json").read_text())
    ev = ev.get("evaluate", ev)  # metrics/<stage>.json: {"<stage>": {...}}
    for model in ("supervised", "multitask", "baseline"):
        assert all(math.isfinite(v) for v in ev[model].values())
    # zero-shot for the models with a text tower only
    assert "zero_shot_top1" in ev["multitask"] and "zero_shot_top1" not in ev["supervised"]
    line = next(ln for ln in first_run.stdout.splitlines()
                if ln.startswith("registered mofi-encoder: "))
    assert "supervised v1" in line and "multitask v2" in line and "best this run: " in line
    assert "mofi ui" in first_run.stdout


def test_override_is_in_dvc_lock_a_dvc_experiment_and_mlflow_not_in_params(project,
                                                                           first_run):
    """`mofi run -S train.steps=12`: the stages saw 12 (dvc.lock), the run is a DVC experiment
    and an MLflow run with its override, and params.yaml is the checkout's again."""
    assert yaml.safe_load(first_run.params_text)["train"]["steps"] == 12
    lock = yaml.safe_load(first_run.lock_text)
    for train in TRAINS:
        assert lock["stages"][train]["params"]["params.yaml"]["train"]["steps"] == 12
    assert (project.root / "params.yaml").read_text() == first_run.params_before
    assert project.run("git", "status", "--porcelain", "params.yaml").stdout == ""
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mofi"], output_format="list")
    first = min((r for r in runs if r.data.tags.get("mofi.kind") == "pipeline"),
                key=lambda r: r.info.start_time)
    assert first.data.params["override.train.steps"] == "12"
    name = first.data.tags["mofi.dvc_experiment"]
    assert name == first.data.tags["mofi.run_name"]  # the Prefect flow run's name
    assert f"recorded as DVC experiment '{name}'" in first_run.stdout
    exp = _dvc_experiments(project)[name]
    assert exp["params"]["params.yaml"]["data"]["train"]["steps"] == 12
    assert exp["metrics"]["metrics/train_multitask.json"]["data"]  # its metrics, too
    evaluate = exp["metrics"]["metrics/evaluate.json"]["data"]
    assert evaluate.get("evaluate", evaluate)["multitask"]["gpr_map"] > 0
    # the run's page in the MLflow UI, printed by `mofi run`
    assert (f"http://127.0.0.1:5000/#/experiments/{first.info.experiment_id}/runs/"
            f"{first.info.run_id}") in first_run.stdout
    children = {r.data.tags.get("mofi.stage") for r in runs
                if r.data.tags.get("mlflow.parentRunId") == first.info.run_id}
    assert children == {s.partition("@")[0] for s in stage_order(project.root / "dvc.yaml")}
    recipes = {r.data.tags.get("mofi.recipe") for r in runs
               if r.data.tags.get("mlflow.parentRunId") == first.info.run_id
               and r.data.tags.get("mofi.stage") == "train"}
    assert recipes == {"supervised", "multitask"}  # one run per candidate
    evaluate_run = next(r for r in runs if r.data.tags.get("mofi.stage") == "evaluate"
                        and r.data.tags.get("mlflow.parentRunId") == first.info.run_id)
    per_model = {r.data.tags.get("mofi.model"): r.data.metrics for r in runs
                 if r.data.tags.get("mlflow.parentRunId") == evaluate_run.info.run_id}
    assert set(per_model) == {"supervised", "multitask", "baseline"}  # a run per model
    first_ev = json.loads(first_run.products["metrics/evaluate.json"])["evaluate"]
    assert per_model["multitask"]["gpr_map"] == pytest.approx(first_ev["multitask"]["gpr_map"])
    # the gate's evidence travels with its run: JSON report and the Data Docs site
    validate = next(r for r in runs if r.data.tags.get("mofi.stage") == "validate"
                    and r.data.tags.get("mlflow.parentRunId") == first.info.run_id)
    client = mlflow.MlflowClient()
    logged = {a.path for a in client.list_artifacts(validate.info.run_id)}
    assert {"validate.json", "data_docs"} <= logged
    assert "index.html" in {a.path.rsplit("/", 1)[-1]
                            for a in client.list_artifacts(validate.info.run_id, "data_docs")}


def test_registered_champion_loads_and_embeds_to_unit_vectors(project, first_run):
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/mofi-encoder@champion")
    image = next((project.root / "data" / "benchmark" / "gpr1200").glob("*.jpg"))
    emb = model.predict(pd.DataFrame({"image": [image.read_bytes()]}))
    assert emb.shape == (1, 128)
    assert np.linalg.norm(emb[0]) == pytest.approx(1.0, abs=1e-5)
    version = mlflow.MlflowClient().get_model_version_by_alias("mofi-encoder", "champion")
    assert any(k.startswith("dvc.build.") for k in version.tags)


def test_no_secret_reaches_files_logs_or_the_mlflow_and_prefect_stores(project, first_run):
    """Dummy credentials were in the environment of every process of this module: grep every
    file of the project (params, dvc.lock, outputs, MLflow sqlite + artifacts, Prefect's
    database and logs) and the run's output for them."""
    from tests.project import DUMMY_SECRETS

    secrets = [v.encode() for v in DUMMY_SECRETS.values()]
    scanned, leaks = 0, []
    for path in project.root.rglob("*"):
        rel = path.relative_to(project.root).parts
        # .git and tests/ are the copied sources (tests/project.py defines the values)
        if path.is_file() and rel[0] not in (".git", "tests"):
            data = path.read_bytes()
            scanned += 1
            leaks += [f"{path.relative_to(project.root)}: {s.decode()}" for s in secrets
                      if s in data]
    leaks += [f"stdout: {s.decode()}" for s in secrets if s.decode() in first_run.stdout]
    assert leaks == []
    assert scanned > 100
    assert (project.root / "mlflow.db").is_file()
    assert any(project.root.joinpath(".prefect").rglob("*.db"))
