"""What DVC re-runs and what it records: runtime keys re-run nothing, a result key re-runs its
stage and everything after it, and a fresh clone's full ``dvc repro`` rewrites ``dvc.lock``
byte for byte (every output identical) and registers a model tagged with a clean commit."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from flows.pipeline import write_overrides
from tests.e2e.conftest import FIRST_OVERRIDES, Project

pytestmark = pytest.mark.e2e

RUNTIME_CHANGES = {"runtime.train.log_every": 7, "runtime.baseline.threads": 1,
                   "runtime.ner.workers": 1, "runtime.ingest.workers": 1,
                   "runtime.score.device": "cpu", "runtime.evaluate.batch_size": 64}
# train's own results (one stage per recipe of TINY's train.recipes) and what reads them
# (dvc.yaml: evaluate <- models; report <- metrics/evaluate.json; register <- models +
# metrics/evaluate.json)
TRAINS = {"train@supervised", "train@multitask"}
AFTER_TRAIN = {*TRAINS, "evaluate", "report", "register"}


def _to_run(project: Project) -> tuple[dict, list[str]]:
    """``dvc status`` and the stages ``dvc repro`` would run, without running any.

    Plain ``--dry`` runs nothing, so the outputs of a stage it would run keep their hashes and
    the stages after it look unchanged; ``--force-downstream`` makes it list them too (as a real
    ``dvc repro`` runs them, their inputs having changed)."""
    status = json.loads(project.run("dvc", "status", "--json").stdout or "{}")
    out = project.run("dvc", "repro", "--dry", "--force-downstream").stdout
    return status, re.findall(r"^Running stage '([\w@]+)'", out, flags=re.M)


@pytest.fixture()
def as_run(project, first_run):
    """The project as its first run left it, params.yaml holding the values that run used (its
    -S override applied to that run only, so dvc.lock records them): DVC sees nothing to do.
    params.yaml is put back after the test."""
    params = project.root / "params.yaml"
    original = params.read_bytes()
    write_overrides(params, FIRST_OVERRIDES)
    try:
        yield project
    finally:
        params.write_bytes(original)


def test_temporaries_left_in_output_folders_change_no_output_hash(as_run):
    """What a killed run can leave inside an output folder (an atomic write's temporary, a
    download, a write probe) is covered by .dvcignore: DVC sees every output unchanged."""
    project = as_run
    left = [project.root / "data" / "ingest" / "shards" / ".00000.tar.tmp-123-deadbeef",
            project.root / "data" / "ingest" / ".fetch-abc123.tar",
            project.root / "data" / "ner" / ".mofi-probe-x1y2"]
    try:
        for path in left:
            path.write_bytes(b"partial")
        assert _to_run(project) == ({}, [])
    finally:
        for path in left:
            path.unlink(missing_ok=True)


def test_runtime_keys_rerun_nothing_and_a_result_key_reruns_its_stage_and_after(as_run):
    project = as_run
    params = project.root / "params.yaml"
    original = params.read_bytes()
    try:
        assert _to_run(project) == ({}, [])
        write_overrides(params, RUNTIME_CHANGES)
        raw = yaml.safe_load(params.read_text())
        assert {f"runtime.{s}.{k}": raw["runtime"][s][k]
                for s, k in (key.split(".")[1:] for key in RUNTIME_CHANGES)} == RUNTIME_CHANGES
        assert _to_run(project) == ({}, [])

        lr = raw["train"]["lr"]
        write_overrides(params, {"train.lr": lr * 2})
        status, ran = _to_run(project)
        assert status.keys() == TRAINS
        # exactly these, once each, train first and evaluate before what reads its metrics;
        # none of corpus, ingest, ner, baseline, score, build, validate
        assert sorted(ran) == sorted(AFTER_TRAIN)
        assert set(ran[:2]) == TRAINS and ran[2] == "evaluate"
    finally:
        params.write_bytes(original)
    assert params.read_bytes() == original
    assert _to_run(project) == ({}, [])


def _lock_outputs(lock_text: str) -> dict[tuple[str, str], dict]:
    """(stage, path) -> the recorded hash fields of each output, from a dvc.lock text."""
    stages = yaml.safe_load(lock_text)["stages"]
    return {(name, o["path"]): {k: v for k, v in o.items() if k != "path"}
            for name, s in stages.items() for o in s.get("outs", [])}


def _lock_differences(expected: str, got: str) -> list[str]:
    want, have = _lock_outputs(expected), _lock_outputs(got)
    diffs = [f"{stage}: {path}: {want.get((stage, path))} -> {have.get((stage, path))}"
             for stage, path in sorted(want.keys() | have.keys())
             if want.get((stage, path)) != have.get((stage, path))]
    if not diffs:  # same outputs: a dep, a param or the layout differs
        diffs = _unified(expected, got)
    return diffs


def _unified(a: str, b: str) -> list[str]:
    import difflib

    return list(difflib.unified_diff(a.splitlines(), b.splitlines(), "first run", "clone",
                                     lineterm="", n=1))


def _stages_not_held_by_git(repo: Project) -> list[str]:
    from mofi_core import stages as table
    from mofi_core.config.load import load_params

    # train@<recipe>: one per listed recipe
    stages = {spec.address: spec for spec in
              table.expand(load_params(repo.root / "params.yaml").value)}
    held = set(repo.run("git", "ls-files").stdout.split())
    return [name for name, stage in stages.items()
            if not all(p in held or any(h.startswith(p + "/") for h in held)
                       for p in stage.tracked())]


@pytest.mark.pipeline
def test_a_clean_clone_reproduces_every_output_and_leaves_git_clean(project, first_run,
                                                                     tmp_path_factory):
    """Clone the project, commit the first run's params.yaml and dvc.lock there (as its user
    would have), run the whole pipeline from no data with ``dvc repro``: dvc.lock is rewritten
    byte for byte (so every output, metric, plot and report equals the first run's) and the
    registered version names the clone's clean commit.

    The commit is made in the clone from the texts ``first_run`` kept, not in the shared
    project: tests before this one re-run stages there (another registry version makes
    reports/register.json differ from a fresh store's), and the project stays as they left it.
    """
    clone = tmp_path_factory.mktemp("clone") / "mofi"
    subprocess.run(["git", "clone", "-q", str(project.root), str(clone)], check=True,
                   capture_output=True)
    env = {k: v for k, v in project.env.items()
           if k not in ("MLFLOW_TRACKING_URI", "MOFI_PARENT_RUN_ID", "MOFI_PROJECT_DIR",
                        "PREFECT_API_URL", "COLUMNS")}
    env["PREFECT_HOME"] = str(clone / ".prefect")
    repo = Project(clone, env)
    (clone / "params.yaml").write_text(first_run.params_text)
    (clone / "dvc.lock").write_text(first_run.lock_text)
    for rel, data in first_run.products.items():  # metrics, plots, small reports: git's
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        (clone / rel).write_bytes(data)
    repo.run("git", "add", "params.yaml", "dvc.lock", *first_run.products)
    repo.run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
             "params, dvc.lock and metrics of the first run")
    assert repo.run("git", "status", "--porcelain").stdout == ""
    head = repo.run("git", "rev-parse", "HEAD").stdout.strip()

    out = repro = repo.run("dvc", "repro", timeout=1200).stdout
    ran = re.findall(r"^Running stage '([\w@]+)'", out, flags=re.M)
    # no data in a clone: every stage with an output in DVC's cache (or git-ignored, like the
    # registry's decision) ran; stages whose outputs are all in git are reproduced by the clone
    assert sorted(ran) == sorted(_stages_not_held_by_git(repo)), repro[-3000:]
    assert {"corpus", *TRAINS, "register"} <= set(ran)

    lock = (clone / "dvc.lock").read_text()
    assert _lock_differences(first_run.lock_text, lock) == []
    assert lock == first_run.lock_text
    assert repo.run("git", "status", "--porcelain").stdout == ""
    assert repo.run("git", "diff", "--stat").stdout == ""
    assert json.loads(repo.run("dvc", "status", "--json").stdout or "{}") == {}

    from mlflow import MlflowClient

    uri = f"sqlite:///{clone / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = yaml.safe_load(first_run.params_text)["register"]["model_name"]
    versions = client.search_model_versions(f"name = '{name}'")
    recipes = yaml.safe_load(first_run.params_text)["train"]["recipes"]
    # one version per candidate, all from this clone's clean commit (the store returns ints)
    assert sorted(str(v.version) for v in versions) == [str(i + 1) for i in range(len(recipes))]
    assert {v.tags["recipe"] for v in versions} == set(recipes)
    for v in versions:
        assert not v.tags["git_commit"].endswith("-dirty")
        assert v.tags["git_commit"] == head
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags["challenger"] == "true", champion.tags  # the run's best only
