"""What DVC re-runs and what it records: runtime keys re-run nothing, a result key re-runs its
stage and everything after it, and a fresh clone's full ``dvc repro`` rewrites ``dvc.lock``
byte for byte (every output identical) and registers a model tagged with a clean commit."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from flows.pipeline import write_overrides
from tests.project import FIRST_OVERRIDES, Project

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


# an error message of each module that runs around every stage, and its rewording
REWORDED = {
    "mofi_core/config/load.py": ("is empty: it must hold the params sections",
                                 "has no sections: it must hold the params sections"),
    "mofi_core/runner.py": ("which is missing: {how}", "which does not exist: {how}"),
    "mofi_core/tracking.py": ("no MLflow store: {", "no MLflow tracking store: {"),
}


def _reword(root, edits: dict[str, tuple[str, str]]) -> dict:
    """Apply each (old, new) text edit to its file under ``root``; the original bytes."""
    kept = {}
    for rel, (old, new) in edits.items():
        path = root / rel
        kept[path] = path.read_bytes()
        text = kept[path].decode("utf-8")
        assert text.count(old) == 1, f"{rel}: {old!r} is not one message there any more"
        path.write_text(text.replace(old, new), encoding="utf-8")
    return kept


def test_rewording_the_runner_loader_or_tracking_reruns_no_stage(as_run):
    """The modules that run around every stage are no stage's code dependency: rewording an
    error in them leaves dvc status clean. Rewording one in a section's schema module re-runs
    that stage and what follows it (the control: the same edit is seen where it matters)."""
    project = as_run
    assert _to_run(project) == ({}, [])
    kept = _reword(project.root, REWORDED)
    try:
        assert _to_run(project) == ({}, [])
        kept |= _reword(project.root, {"mofi_core/config/build.py": (
            "build.rules lists both threshold and fdr", "build.rules names threshold and fdr")})
        status, ran = _to_run(project)
        assert set(status) == {"build", "report"}  # the two stages that read the build schema
        assert ran[0] == "build" and {"validate", *TRAINS, "evaluate", "report"} <= set(ran)
        assert not {"corpus", "kb", "ingest", "ner", "baseline", "score"} & set(ran)
    finally:
        for path, data in kept.items():
            path.write_bytes(data)
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


