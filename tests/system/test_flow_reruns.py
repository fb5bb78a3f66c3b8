"""Re-runs of the whole flow on the shared tiny project: what reruns, what is skipped, what a
failed stage leaves."""

from __future__ import annotations

import json
import re

from flows.pipeline import stage_order
from tests.e2e.test_flow import AFTER_TRAIN, TRAINS, _statuses


def test_a_plain_run_reruns_only_what_an_override_changed_then_nothing(project, first_run):
    """After a run with overrides, dvc.lock describes it while params.yaml is the checkout's:
    the next plain run re-runs the stages the override changed, with the checkout's params
    (unless a run since has done so already), and the one after it skips every stage."""
    stale = json.loads(project.run("dvc", "status", "--json").stdout or "{}")
    assert set(stale) <= TRAINS
    order = stage_order(project.root / "dvc.yaml")
    first = _statuses(project.run("mofi", "run").stdout)
    assert {s for s, status in first.items() if status == "ran"} == (
        AFTER_TRAIN if stale else set())
    again = project.run("mofi", "run")
    assert _statuses(again.stdout) == {s: "skipped" for s in order}
    assert json.loads(project.run("dvc", "status", "--json").stdout or "{}") == {}


def test_changing_one_param_reruns_only_what_is_downstream(project, first_run):
    assert json.loads(project.run("dvc", "status", "--json").stdout or "{}") == {}
    from flows.pipeline import write_overrides
    from mofi_core.config.load import load_params

    steps = load_params(project.root / "params.yaml").train.steps
    write_overrides(project.root / "params.yaml", {"train.steps": steps + 1})
    assert json.loads(project.run("dvc", "status", "--json").stdout).keys() == TRAINS
    out = project.run("dvc", "repro").stdout
    ran = re.findall(r"Running stage '([\w@]+)'", out)
    assert set(ran[:2]) == TRAINS and ran[2] == "evaluate"
    assert sorted(ran[3:]) == ["register", "report"]
    assert json.loads(project.run("dvc", "status", "--json").stdout or "{}") == {}
