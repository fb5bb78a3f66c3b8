"""The Prefect flow's own behaviour on toy DVC projects: order, parallel stages, retries,
failure, skipping, per-run overrides and the summary's MLflow links."""

import json
import subprocess

import pytest
import yaml

from flows.mofi_flow import StageFailed, mofi
from tests.conftest import ROOT

# about 100 s on a real Prefect server: system tier (make test-all), beside the other flow runs

DVC_YAML = """
stages:
  second:
    cmd: python flaky.py
    deps: [first.txt, flaky.py]
    outs: [second.txt]
  first:
    cmd: python first.py
    deps: [first.py]
    params: [train.steps]
    outs: [first.txt, {run_name.txt: {cache: false}}]
    metrics: [{first.json: {cache: false}}]
"""
# the stage sees the flow run's name, and reports the params it ran with as its metric
FIRST = """
import json, os, pathlib, yaml
pathlib.Path('first.txt').write_text('1')
pathlib.Path('run_name.txt').write_text(os.environ.get('MOFI_RUN_NAME', ''))
steps = yaml.safe_load(open('params.yaml'))['train']['steps']
pathlib.Path('first.json').write_text(json.dumps({'steps_seen': steps}))
"""
# fails on its first attempt only: the task's retry must make the run succeed
FLAKY = """
import pathlib
marker = pathlib.Path('attempted')
if not marker.exists():
    marker.write_text('x')
    raise SystemExit('first attempt fails')
pathlib.Path('second.txt').write_text('2')
"""
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _toy(path, git=True):
    (path / "dvc.yaml").write_text(DVC_YAML)
    (path / "first.py").write_text(FIRST)
    (path / "flaky.py").write_text(FLAKY)
    (path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    init = [["git", "init", "-q"], ["dvc", "init", "-q"]] if git else [
        ["dvc", "init", "-q", "--no-scm"]]
    for cmd in (*init, ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=path, check=True)
    return path


@pytest.fixture()
def toy(tmp_path):
    return _toy(tmp_path)


def _run(root, *args):
    return subprocess.run(list(args), cwd=root, capture_output=True, text=True,
                          check=True).stdout


def _commit(root):
    _run(root, "git", "add", "-A")
    _run(root, *GIT, "commit", "-qm", "toy")
    return _run(root, "git", "rev-parse", "HEAD").strip()


def _dvc_experiments(root):
    """``dvc exp show``: experiment name -> its params, metrics... as DVC reports them."""
    shown = json.loads(_run(root, "dvc", "exp", "show", "--json"))
    return {rev["name"]: rev["data"] for base in shown for exp in base.get("experiments") or []
            for rev in exp["revs"]}


def _latest_artifacts():
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    latest = {}
    for a in sorted(artifacts, key=lambda a: a.created):
        latest[a.key] = a
    return latest


def test_stages_run_in_dag_order_and_a_failed_attempt_is_retried(prefect_server, toy):
    summary = mofi(project_dir=str(toy), retries=1)
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == \
        [("first", "ran"), ("second", "ran")]
    assert (toy / "second.txt").read_text() == "2"
    again = mofi(project_dir=str(toy), retries=1)
    assert [s["status"] for s in again["stages"]] == ["skipped", "skipped"]


def test_a_stage_that_keeps_failing_fails_the_run_naming_it(prefect_server, toy):
    (toy / "flaky.py").write_text("raise SystemExit('always broken')\n")
    with pytest.raises(StageFailed, match="stage 'second' failed"):
        mofi(project_dir=str(toy), retries=0)


def test_invalid_override_fails_before_any_stage_runs(prefect_server, toy):
    from mofi_core.config.section import ParamsError

    with pytest.raises(ParamsError, match=r"train\.stepz"):
        mofi(overrides={"train.stepz": 3}, project_dir=str(toy))
    assert not (toy / "first.txt").exists()


def test_overrides_last_one_run_and_are_recorded_as_a_dvc_experiment(prefect_server, toy):
    head = _commit(toy)
    original = (toy / "params.yaml").read_bytes()
    summary = mofi.with_options(flow_run_name="toy override run")(
        overrides={"train.steps": 33}, project_dir=str(toy))
    assert [s["status"] for s in summary["stages"]] == ["ran", "ran"]
    assert (toy / "params.yaml").read_bytes() == original  # comments, quotes, layout: all
    assert (toy / "run_name.txt").read_text() == "toy override run"  # MOFI_RUN_NAME
    # DVC saw the override: dvc.lock records what produced the outputs. With params.yaml back
    # to the checkout's, `dvc status` honestly says `first` is out of date: the next run
    # re-runs it with the checkout's params
    lock = yaml.safe_load((toy / "dvc.lock").read_text())
    assert lock["stages"]["first"]["params"]["params.yaml"] == {"train.steps": 33}
    assert "first" in json.loads(_run(toy, "dvc", "status", "--json"))
    # recorded as a DVC experiment named after the flow run, on top of HEAD
    assert "recorded as DVC experiment 'toy-override-run'" in summary["overrides_record"]
    exp = _dvc_experiments(toy)["toy-override-run"]
    assert exp["params"]["params.yaml"]["data"]["train"]["steps"] == 33
    assert exp["metrics"]["first.json"]["data"] == {"steps_seen": 33}
    assert _run(toy, "git", "rev-parse", "HEAD").strip() == head
    assert _run(toy, "git", "diff", "--cached", "--name-only") == ""  # nothing staged
    assert _run(toy, "git", "status", "--porcelain", "params.yaml") == ""
    artifact = _latest_artifacts()["mofi-run-summary"].data
    assert 'Overrides: `{"train.steps": 33}`' in artifact and "toy-override-run" in artifact
    # the next run without overrides re-runs what the override changed, and only that
    again = mofi(project_dir=str(toy))
    assert [(s["stage"], s["status"]) for s in again["stages"]] == [("first", "ran"),
                                                                     ("second", "skipped")]
    lock = yaml.safe_load((toy / "dvc.lock").read_text())
    assert lock["stages"]["first"]["params"]["params.yaml"] == {
        "train.steps": yaml.safe_load(original)["train"]["steps"]}


def test_params_are_put_back_after_a_failing_stage_too(prefect_server, toy):
    _commit(toy)
    original = (toy / "params.yaml").read_bytes()
    (toy / "flaky.py").write_text("raise SystemExit('always broken')\n")
    with pytest.raises(StageFailed, match="stage 'second' failed"):
        mofi(overrides={"train.steps": 44, "build.threshold": 0.25}, project_dir=str(toy),
             retries=0)
    assert (toy / "params.yaml").read_bytes() == original
    lock = yaml.safe_load((toy / "dvc.lock").read_text())
    assert lock["stages"]["first"]["params"]["params.yaml"] == {"train.steps": 44}
    assert _dvc_experiments(toy) == {}  # a failed run is not an experiment
    summary = _latest_artifacts()["mofi-run-summary"].data
    assert "| second | FAILED |" in summary and "not recorded as a DVC experiment" in summary
    assert not list((toy / ".mofi" / "flow").glob("*.json"))  # no backup left behind


def test_without_git_overrides_still_last_one_run_and_say_they_are_not_recorded(
        prefect_server, tmp_path):
    toy = _toy(tmp_path, git=False)
    original = (toy / "params.yaml").read_bytes()
    summary = mofi(overrides={"train.steps": 33}, project_dir=str(toy))
    assert (toy / "params.yaml").read_bytes() == original
    assert "applied to this run only and not recorded as a DVC experiment" in \
        summary["overrides_record"]
    assert "not a git repo with a commit" in summary["overrides_record"]


# b and c both wait for a only: DVC lets them run at the same time
PARALLEL = """
stages:
  d: {cmd: python span.py d 0, deps: [b.json, c.json], outs: [d.json]}
  c: {cmd: python span.py c 3, deps: [a.json, span.py], outs: [c.json]}
  b: {cmd: python span.py b 3, deps: [a.json, span.py], outs: [b.json]}
  a: {cmd: python span.py a 0, outs: [a.json]}
"""
SPAN = """
import json, sys, time
start = time.time(); time.sleep(float(sys.argv[2]))
json.dump([start, time.time()], open(sys.argv[1] + '.json', 'w'))
"""


def _spans(root):
    return {s: json.loads((root / f"{s}.json").read_text()) for s in "abcd"}


def test_stages_dvc_allows_in_parallel_run_in_parallel_and_dvc_records_both(prefect_server,
                                                                            tmp_path):
    (tmp_path / "dvc.yaml").write_text(PARALLEL)
    (tmp_path / "span.py").write_text(SPAN)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    for cmd in (["dvc", "init", "-q", "--no-scm"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=tmp_path, check=True)

    summary = mofi(project_dir=str(tmp_path), max_parallel=2, retries=0)
    assert [s["stage"] for s in summary["stages"]] == ["a", "c", "b", "d"]
    span = _spans(tmp_path)
    assert span["b"][0] < span["c"][1] and span["c"][0] < span["b"][1]  # b and c overlapped
    assert span["a"][1] <= min(span["b"][0], span["c"][0])
    assert max(span["b"][1], span["c"][1]) <= span["d"][0]
    # DVC's bookkeeping is whole: every stage in dvc.lock, nothing out of date
    assert set(yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]) == set("abcd")
    assert json.loads(_run(tmp_path, "dvc", "status", "--json")) == {}

    (tmp_path / "span.py").write_text(SPAN + "# changed: b, c and d run again\n")
    summary = mofi(project_dir=str(tmp_path), max_parallel=1, retries=0)
    assert [s["status"] for s in summary["stages"]] == ["skipped", "ran", "ran", "ran"]
    span = _spans(tmp_path)
    assert span["c"][1] <= span["b"][0]  # one at a time, in DVC's order
    assert json.loads(_run(tmp_path, "dvc", "status", "--json")) == {}


# what `mofi validate` does, in small: a run tagged mofi.stage=validate (nested under the
# pipeline run the flow passes in MOFI_PARENT_RUN_ID) logs the Data Docs, then the gate fails
GATE = """
import json, pathlib, sys
from mofi_core import tracking
with tracking.run('validate', pathlib.Path('.'), tags={'mofi.stage': 'validate'}) as run:
    docs = pathlib.Path('reports/data_docs'); docs.mkdir(parents=True, exist_ok=True)
    (docs / 'index.html').write_text('<html>docs</html>')
    pathlib.Path('reports/validate.json').write_text(json.dumps({'summary': {
        'expectations': 20, 'failed': 2, 'warnings': 1, 'success': False}}))
    run.log_artifact(docs, 'data_docs')
    sys.exit('data validation failed: 2 of 20 expectations')
"""


def test_a_failed_gate_still_publishes_the_summary_with_mlflow_links(prefect_server, toy,
                                                                      monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MOFI_TRACKING", "on")  # the project's own store: <toy>/mlflow.db
    monkeypatch.setenv("MOFI_MLFLOW_UI_URL", "http://mlflow.example:5000/")
    (toy / "flaky.py").write_text(GATE)
    with pytest.raises(StageFailed, match="stage 'second' failed"):
        mofi(project_dir=str(toy), retries=0)
    latest = _latest_artifacts()
    summary = latest["mofi-run-summary"].data
    assert "| second | FAILED |" in summary and "Data validation: **FAILED**" in summary
    assert "20 expectations, 2 failed, 1 warnings" in summary

    uri = f"sqlite:///{toy / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mofi").experiment_id
    [parent] = client.search_runs([experiment], "tags.`mofi.kind` = 'pipeline'")
    [validate] = client.search_runs([experiment], "tags.`mofi.stage` = 'validate'")
    assert validate.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "data_docs/index.html" in {a.path for a in client.list_artifacts(
        validate.info.run_id, "data_docs")}
    run_page = f"http://mlflow.example:5000/#/experiments/{experiment}/runs/{parent.info.run_id}"
    docs_page = (f"http://mlflow.example:5000/#/experiments/{experiment}/runs/"
                 f"{validate.info.run_id}/artifacts/data_docs/index.html")
    assert f"]({run_page})" in summary and f"]({docs_page})" in summary
    assert latest["mofi-mlflow-run"].data == f"[MLflow run]({run_page})"
    assert latest["mofi-data-docs"].data == f"[Data Docs]({docs_page})"
    assert "file://" not in summary
    # the parent run carries what the stages ran with: params.yaml and dvc.lock
    assert {"params.yaml", "dvc.lock"} <= {a.path for a in client.list_artifacts(
        parent.info.run_id)}
