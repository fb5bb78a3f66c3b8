"""The Prefect flow's own behaviour on a toy DVC project: order, retries, failure, skipping."""

import subprocess

import pytest

from flows.mofi_flow import StageFailed, mofi
from tests.conftest import ROOT

DVC_YAML = """
stages:
  second:
    cmd: python flaky.py
    deps: [first.txt, flaky.py]
    outs: [second.txt]
  first:
    cmd: python -c "open('first.txt', 'w').write('1')"
    outs: [first.txt]
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


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def toy(tmp_path):
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    return tmp_path


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
    from mofi_core.config import ParamsError

    with pytest.raises(ParamsError, match=r"train\.stepz"):
        mofi(overrides={"train.stepz": 3}, project_dir=str(toy))
    assert not (toy / "first.txt").exists()


GATE = """
import json, pathlib, sys
docs = pathlib.Path('reports/data_docs'); docs.mkdir(parents=True, exist_ok=True)
(docs / 'index.html').write_text('<html>docs</html>')
pathlib.Path('reports/validate.json').write_text(json.dumps({'summary': {
    'expectations': 20, 'failed': 2, 'warnings': 1, 'success': False}}))
sys.exit('data validation failed: 2 of 20 expectations')
"""


def test_a_failed_gate_still_publishes_the_summary_and_the_data_docs_link(prefect_server, toy):
    from prefect.client.orchestration import get_client

    (toy / "flaky.py").write_text(GATE)
    with pytest.raises(StageFailed, match="stage 'second' failed"):
        mofi(project_dir=str(toy), retries=0)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    latest = {}
    for a in sorted(artifacts, key=lambda a: a.created):
        latest[a.key] = a
    summary = latest["mofi-run-summary"].data
    assert "| second | FAILED |" in summary and "Data validation: **FAILED**" in summary
    assert "20 expectations, 2 failed, 1 warnings" in summary
    docs = (toy / "reports" / "data_docs" / "index.html").as_uri()
    assert latest["mofi-data-docs"].data == f"[Data Docs]({docs})"
    assert docs in summary
