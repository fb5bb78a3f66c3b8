"""`prefect server start` + `mofi serve` + `prefect deployment run mofi/local --watch`, and
`prefect deploy` of infra/prefect.yaml + a worker + `prefect deployment run mofi/full`, for real,
on loopback; every process started here is stopped here."""

import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager

import mlflow
import pytest

from tests.ports import free_port
from tests.servers import healthy


@contextmanager
def _background(cmd, project, log_name):
    log = open(project.root / log_name, "w")
    proc = subprocess.Popen(cmd, cwd=project.root, env=project.env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        log.close()


def _wait_for(check, what, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def prefect_api(project, first_run):
    """A real `prefect server start` on loopback for this module; PREFECT_API_URL points at it
    in the project's environment while it runs."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server_cmd = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _background(server_cmd, project, "server.log") as server:
        _wait_for(lambda: healthy(url) or server.poll() is not None, "the Prefect server")
        assert server.poll() is None, (project.root / "server.log").read_text()[-3000:]
        project.env["PREFECT_API_URL"] = url
        project.env["COLUMNS"] = "100000"  # the CLI wraps its output at the terminal width
        try:
            yield url
        finally:
            project.env.pop("PREFECT_API_URL")
            project.env.pop("COLUMNS")


def _dvc_experiments(project):
    """``dvc exp show``: experiment name -> its params, metrics... as DVC reports them."""
    shown = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    return {rev["name"]: rev["data"] for base in shown for exp in base.get("experiments") or []
            for rev in exp["revs"]}


def test_deployment_run_completes_against_a_real_server(project, prefect_api):
    params = project.root / "params.yaml"
    before = params.read_bytes()
    with _background(["mofi", "serve"], project, "serve.log") as serve:
        _wait_for(lambda: serve.poll() is not None or project.run(
            "prefect", "deployment", "inspect", "mofi/local", check=False
        ).returncode == 0, "deployment mofi/local")
        assert serve.poll() is None, (project.root / "serve.log").read_text()[-3000:]
        out = project.run("prefect", "deployment", "run", "mofi/local", "--watch",
                          "-p", 'overrides={"train.steps": 14}', timeout=900)
    artifact = project.run("prefect", "artifact", "inspect", "mofi-run-summary").stdout
    assert "Completed" in out.stdout, out.stdout[-3000:]
    # the override was for that run only: the worker's checkout is as it was, byte for byte
    assert params.read_bytes() == before
    assert project.run("git", "status", "--porcelain", "params.yaml").stdout == ""
    # `mofi serve` has its own deployment: `prefect deploy` of infra/prefect.yaml owns `full`
    assert project.run("prefect", "deployment", "inspect", "mofi/full",
                       check=False).returncode != 0
    # the run summary artifact: stage table, metrics and the registered version
    for text in ("| train@multitask | ran |", "| corpus | skipped |", "Every model",
                 "| MOFI (multitask) | 0.", "| supervised | 0.", "mofi-encoder"):
        assert text in artifact, artifact[-3000:]
    # the run really happened: its override reached DVC and MLflow, and only the stages
    # downstream of train.steps ran under its pipeline run
    lock = (project.root / "dvc.lock").read_text()
    assert "steps: 14" in lock
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mofi"], output_format="list")
    parent = next(r for r in sorted(runs, key=lambda r: r.info.start_time, reverse=True)
                  if r.data.tags.get("mofi.kind") == "pipeline")
    assert json.loads(parent.data.tags["mofi.overrides"]) == {"train.steps": 14}
    children = {r.data.tags["mofi.stage"] for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children == {"train", "evaluate", "report", "register"}  # train: one per recipe
    # ...and it is recorded as a DVC experiment named after the flow run
    name = parent.data.tags["mofi.dvc_experiment"]
    assert name == parent.data.tags["mofi.run_name"]
    exp = _dvc_experiments(project)[name]
    assert exp["params"]["params.yaml"]["data"]["train"]["steps"] == 14
    assert "error" not in exp["metrics"]["metrics/evaluate.json"]  # its metrics are in it
    # the summary links the pipeline run and the latest validate run's Data Docs in the
    # MLflow UI (validate did not run this time: the first run's validate run has them)
    validate = max((r for r in runs if r.data.tags.get("mofi.stage") == "validate"),
                   key=lambda r: r.info.start_time)
    ui = f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs"
    assert f"{ui}/{parent.info.run_id}" in artifact, artifact[-3000:]
    assert f"{ui}/{validate.info.run_id}/artifacts/data_docs/index.html" in artifact


def test_prefect_deploy_from_infra_yaml_and_a_process_worker_run_the_flow(project,
                                                                          prefect_api):
    """The production path: a process work pool, `prefect deploy` of infra/prefect.yaml and a
    `prefect worker start`. A run with overrides leaves dvc.lock describing it while
    params.yaml is the checkout's, so this plain run re-runs what the override changed (with
    the checkout's params) and nothing else."""
    stale = json.loads(project.run("dvc", "status", "--json").stdout or "{}")
    project.run("prefect", "work-pool", "create", "mofi", "--type", "process")
    project.env["MOFI_PROJECT_DIR"] = str(project.root)
    try:
        project.run("prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                    "infra/prefect.yaml")
        worker = ["prefect", "worker", "start", "--pool", "mofi", "--type", "process"]
        with _background(worker, project, "worker.log"):
            out = project.run("prefect", "deployment", "run", "mofi/full", "--watch",
                              timeout=600)
    finally:
        project.env.pop("MOFI_PROJECT_DIR")
    assert "Completed" in out.stdout, (out.stdout[-2000:]
                                       + (project.root / "worker.log").read_text()[-3000:])
    artifact = project.run("prefect", "artifact", "inspect", "mofi-run-summary").stdout
    again = "ran" if "train@multitask" in stale else "skipped"
    assert f"| train@multitask | {again} |" in artifact
    assert f"| register | {again} |" in artifact
    assert "| corpus | skipped |" in artifact and "| validate | skipped |" in artifact
    assert "Data validation" in artifact  # the gate's summary is read from the last run
    assert json.loads(project.run("dvc", "status", "--json").stdout or "{}") == {}
    assert project.run("prefect", "deployment", "inspect", "mofi/local",
                       check=False).returncode == 0  # both deployments, side by side
