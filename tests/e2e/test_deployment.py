"""`prefect server start` + `mofi serve` + `prefect deployment run mofi/full --watch`, for real,
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

pytestmark = pytest.mark.e2e


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


def test_deployment_run_completes_against_a_real_server(project, prefect_api):
    with _background(["mofi", "serve"], project, "serve.log") as serve:
        _wait_for(lambda: serve.poll() is not None or project.run(
            "prefect", "deployment", "inspect", "mofi/full", check=False
        ).returncode == 0, "deployment mofi/full")
        assert serve.poll() is None, (project.root / "serve.log").read_text()[-3000:]
        out = project.run("prefect", "deployment", "run", "mofi/full", "--watch",
                          "-p", 'overrides={"train.steps": 14}', timeout=900)
    artifact = project.run("prefect", "artifact", "inspect", "mofi-run-summary").stdout
    assert "Completed" in out.stdout, out.stdout[-3000:]
    # the run summary artifact: stage table, metrics and the registered version
    for text in ("| train | ran |", "| corpus | skipped |", "Retrieval", "mofi-encoder"):
        assert text in artifact, artifact[-3000:]
    # the run really happened: its override reached DVC and MLflow, and only the stages
    # downstream of train.steps ran under its pipeline run
    lock = (project.root / "dvc.lock").read_text()
    assert "steps: 14" in lock
    mlflow.set_tracking_uri(f"sqlite:///{project.root / '.mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mofi"], output_format="list")
    parent = next(r for r in sorted(runs, key=lambda r: r.info.start_time, reverse=True)
                  if r.data.tags.get("mofi.kind") == "pipeline")
    assert json.loads(parent.data.tags["mofi.overrides"]) == {"train.steps": 14}
    children = {r.data.tags["mofi.stage"] for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children == {"train", "evaluate", "report", "register"}


def test_prefect_deploy_from_infra_yaml_and_a_process_worker_run_the_flow(project,
                                                                          prefect_api):
    """The production path: a process work pool, `prefect deploy` of infra/prefect.yaml and a
    `prefect worker start`; the run finds every stage up to date (the runs above did them)."""
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
    assert "| train | skipped |" in artifact and "| register | skipped |" in artifact
    assert "Data validation" in artifact  # the gate's summary is read from the last run
