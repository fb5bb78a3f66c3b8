"""One tiny project copy, run once through the Prefect flow over DVC (fixtures ``project`` and
``first_run``), shared by the e2e and system tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.pipeline import write_overrides
from tests.conftest import BIN, PRODUCTS, TINY, copy_project

# Set for every e2e process: none of them may reach a file, a log or the MLflow/Prefect stores.
DUMMY_SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAMOFIDUMMYKEY7Q3Z", "AWS_SECRET_ACCESS_KEY":
                 "mofi-dummy-aws-secret-9c1f7e", "AWS_SESSION_TOKEN": "mofi-dummy-session-4b2d",
                 "MLFLOW_TRACKING_PASSWORD": "mofi-dummy-mlflow-pw-61a0",
                 "HF_TOKEN": "hf_mofidummytoken5e8c"}


@dataclass
class Project:
    root: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: int = 900, check: bool = True
            ) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), cwd=self.root, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc


def tiny_project(root: Path) -> Project:
    """A copy of this checkout in ``root`` with the tiny params committed, and the environment
    its commands run in (the venv's tools, tracking on, offline, dummy secrets)."""
    root = copy_project(root)
    write_overrides(root / "params.yaml", TINY)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam",
                    "tiny params"], cwd=root, check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "MOFI_PARENT_RUN_ID",
                        "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MOFI_RUN_NAME")}
    env.update({"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "MOFI_TRACKING": "on",
                "PREFECT_HOME": str(root / ".prefect"), "MLFLOW_DISABLE_TELEMETRY": "true",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", **DUMMY_SECRETS})
    return Project(root, env)


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Project:
    return tiny_project(tmp_path_factory.mktemp("project"))


@dataclass
class FirstRun:
    stdout: str
    params_text: str  # the params the run used, its dvc.lock and the small outputs git holds
    lock_text: str  # (metrics/, plots/, reports/), as they were right after it
    products: dict[str, bytes]
    params_before: str  # params.yaml before the run (the override applies to that run only)
    stderr: str  # Prefect's log lines, each stage's output among them
    # a copy of the project's outputs, params.yaml and dvc.yaml right after the run: later tests
    # (re-runs, deployments) change the shared project, tests that need its first state copy this
    copy: Path


FIRST_OVERRIDES = {"train.steps": 12}


@pytest.fixture(scope="session")
def first_run(project) -> FirstRun:
    """``mofi run`` with one override, exactly as a user would type it."""
    before = (project.root / "params.yaml").read_text()
    proc = project.run("mofi", "run", "-S", "train.steps=12")
    used = project.root.parent / "params-of-the-first-run.yaml"
    used.write_text(before)
    write_overrides(used, FIRST_OVERRIDES)
    listed = project.run("git", "ls-files", "-o", "-m", "--exclude-standard", "--",
                         *PRODUCTS).stdout.split()
    products = {f: (project.root / f).read_bytes() for f in listed
                if (project.root / f).is_file()}
    copy = project.root.parent / "after-the-first-run"
    copy.mkdir()
    for name in (*PRODUCTS, "params.yaml", "dvc.yaml"):
        src = project.root / name
        if src.is_dir():
            shutil.copytree(src, copy / name, symlinks=True)
        else:
            shutil.copy2(src, copy / name)
    return FirstRun(proc.stdout, used.read_text(), (project.root / "dvc.lock").read_text(),
                    products, before, proc.stderr, copy)
