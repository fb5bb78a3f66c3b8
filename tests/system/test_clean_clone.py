"""A clean clone of the project reproduces every output of the first run and leaves git clean."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from tests.e2e.test_lock_and_caching import TRAINS, _lock_differences, _stages_not_held_by_git
from tests.project import Project


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
