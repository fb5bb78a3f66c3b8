"""Reviewing runs with the tools themselves, as docs/review.md describes: DVC experiments
compare (``dvc exp show``, ``dvc metrics diff``, ``dvc plots diff``), the champion never moves
back to a worse version, MLflow knows which data, params and code made each version, and plain
``mlflow`` code run in the project root loads the champion with no environment variable.

Its own tiny project (main + two ``dvc exp run``): the system tier, run by CI after
``make test``."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from flows.pipeline import write_overrides
from mofi_core.tracking import flatten
from tests.project import Project, tiny_project

EXPERIMENTS = {"short-train": 8, "long-train": 40}  # train.steps of each experiment
GIT = ("git", "-c", "user.name=t", "-c", "user.email=t@t")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Project:
    """main: the tiny pipeline reproduced and committed (dvc.lock, metrics, plots, reports),
    then one ``dvc exp run -S train.steps=N`` per experiment."""
    project = tiny_project(tmp_path_factory.mktemp("review"))
    # one candidate (MOFI): a version per run, so versions and runs map one to one
    write_overrides(project.root / "params.yaml", {"train.recipes": ["multitask"]})
    # committed before the run: the model is then made at a clean commit (not "-dirty")
    project.run(*GIT, "commit", "-qam", "one candidate: multitask")
    # the tiny pipeline, as docs/review.md runs it (every stage starts cold)
    project.run("dvc", "repro", timeout=1500)
    project.run("git", "add", "-A")
    project.run(*GIT, "commit", "-qm", "main: tiny pipeline")
    assert project.run("git", "status", "--porcelain").stdout == ""
    for name, steps in EXPERIMENTS.items():
        project.run("dvc", "exp", "run", "-n", name, "-S", f"train.steps={steps}",
                    timeout=1200)
    return project


def _client(project: Project):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project.root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_dvc_compares_main_and_the_experiments(repo):
    rows = json.loads(repo.run("dvc", "exp", "show", "--json").stdout)
    seen = {}
    for row in rows:  # the baseline commit, with its experiments nested
        for exp in [row, *(e for r in row.get("experiments") or [] for e in r["revs"])]:
            data = (exp.get("data") or {})
            metrics = data.get("metrics", {}).get("metrics/evaluate.json", {}).get("data", {})
            params = data.get("params", {}).get("params.yaml", {}).get("data", {})
            seen[exp.get("name") or exp["rev"]] = (params["train"]["steps"],
                                                   metrics["evaluate"]["multitask"]["gpr_map"])
    for name, steps in EXPERIMENTS.items():
        assert seen[name][0] == steps and 0 <= seen[name][1] <= 1, seen
    main = yaml.safe_load(repo.run("git", "show", "HEAD:params.yaml").stdout)["train"]["steps"]
    assert any(s == main and 0 <= v <= 1 for s, v in seen.values()), seen  # main has numbers

    # the workspace holds the last experiment: metrics diff against main, stage-prefixed keys
    diff = json.loads(repo.run("dvc", "metrics", "diff", "--json").stdout)
    keys = set(diff.get("metrics/train_multitask.json", {}))
    assert "train.multitask.steps" in keys, diff
    assert diff["metrics/train_multitask.json"]["train.multitask.steps"]["new"] \
        == EXPERIMENTS["long-train"]
    shown = repo.run("dvc", "metrics", "show", "--json").stdout
    assert "evaluate.multitask.gpr_map" in json.dumps(flatten(json.loads(shown)))

    # plots: PNG images of both revisions, readable offline (local files; only the loss CSVs'
    # interactive panes load DVC's vega renderer from the web)
    out = repo.root / "dvc_plots"
    repo.run("dvc", "plots", "diff", "HEAD", "-o", str(out))
    page = (out / "index.html").read_text()
    images = re.findall(r"<img[^>]+src=[\"']([^\"']+)", page)
    assert any("train_multitask_loss.png" in i for i in images), images
    assert any("pr_curves.png" in i for i in images), images
    assert not any(i.startswith(("http:", "https:")) for i in images)
    assert all((out / i).is_file() for i in images if not i.startswith("data:"))
    assert "dvc_plots" not in repo.run("git", "status", "--porcelain").stdout  # ignored


def test_the_champion_never_moves_back_and_main_reregisters_nothing(repo):
    client = _client(repo)
    versions = client.search_model_versions("name = 'mofi-encoder'")
    assert len(versions) == 1 + len(EXPERIMENTS)
    value = {int(v.version): float(v.tags["gpr_map"]) for v in versions}
    champion = int(client.get_model_version_by_alias("mofi-encoder", "champion").version)
    # promoted only when strictly better: the champion is the first version with the best value
    best = max(value.values())
    assert value[champion] == best and champion == min(v for v in value if value[v] == best)

    # back to main, then register main's model again (dvc repro -f -s register)
    repo.run("git", "checkout", "--", ".")
    repo.run("dvc", "checkout", "--force")
    out = repo.run("dvc", "repro", "--force", "--single-item", "register").stdout
    assert "already version 1" in out and "aliases unchanged" in out, out[-2000:]
    assert int(client.get_model_version_by_alias("mofi-encoder", "champion").version) \
        == champion
    assert len(client.search_model_versions("name = 'mofi-encoder'")) == 1 + len(EXPERIMENTS)
    report = json.loads((repo.root / "reports" / "register.json").read_text())
    assert report["candidates"]["multitask"]["version"] == 1
    assert report["champion"] == champion


def test_each_version_says_which_data_params_and_code_made_it(repo):
    client = _client(repo)
    # main's model was made at the commit before its outputs were committed; the experiments
    # ran on top of main (params changed: "-dirty", and the changed params are tags)
    made_at, head = repo.run("git", "rev-parse", "HEAD~1", "HEAD").stdout.split()
    lock = yaml.safe_load(repo.run("git", "show", "HEAD:dvc.lock").stdout)["stages"]
    i2e = next(d["md5"] for d in lock["train@multitask"]["deps"] if d["path"] == "data/i2e")
    bench = next(d["md5"] for d in lock["evaluate"]["deps"] if d["path"] == "data/benchmark")
    versions = {int(v.version): v for v in client.search_model_versions(
        "name = 'mofi-encoder'")}
    main = versions[1]
    assert main.tags["git_commit"] == made_at  # clean: the pipeline changed only products
    assert main.tags["input.data/i2e"] == i2e and main.tags["input.data/benchmark"] == bench
    evaluated = json.loads(repo.run("git", "show", "HEAD:metrics/evaluate.json").stdout)
    assert main.tags["benchmark_digest"] == evaluated["evaluate"]["benchmark"]["digest"]
    assert main.tags["params_changed"].startswith("none")
    for number, (name, steps) in enumerate(EXPERIMENTS.items(), start=2):
        tags = versions[number].tags
        assert tags["param.train.steps"] == str(steps) and tags["git_commit"] == head + "-dirty"
        # registered from the train run that logged it, with its I2E set as an MLflow dataset
        train = client.get_run(versions[number].run_id)
        assert train.info.run_name == "train@multitask"
        (dataset,) = [d.dataset for d in train.inputs.dataset_inputs if d.dataset.name == "i2e"]
        assert dataset.digest == i2e  # the experiments changed train, not the data
        # grouped under a parent run named for the experiment
        parent = client.get_run(train.data.tags["mlflow.parentRunId"])
        assert parent.info.run_name == name and parent.data.params == {
            "override.train.steps": str(steps)}
    for run in client.search_runs([client.get_experiment_by_name("mofi").experiment_id],
                                  max_results=500):
        assert run.data.tags.get("mlflow.source.git.commit") in (made_at, head), \
            run.info.run_name


def test_plain_mlflow_in_the_project_root_loads_the_champion(repo):
    env = {k: v for k, v in repo.env.items() if k != "MLFLOW_TRACKING_URI"}
    code = ("import mlflow, pandas as pd, pathlib, numpy as np\n"
            "m = mlflow.pyfunc.load_model('models:/mofi-encoder@champion')\n"
            "img = sorted(pathlib.Path('data/benchmark').rglob('*.jpg'))[0].read_bytes()\n"
            "v = m.predict(pd.DataFrame({'image': [img]}))\n"
            "print('shape', v.shape, 'norm', round(float(np.linalg.norm(v[0])), 4))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo.root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"shape \(1, \d+\) norm 1\.0", out.stdout), out.stdout
    assert not (repo.root / "mlruns").exists()
