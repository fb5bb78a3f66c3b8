"""One tiny project copy, run once through the Prefect flow over DVC, shared by the e2e tests."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.pipeline import write_overrides
from tests.conftest import BIN, TINY, copy_project

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


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Project:
    root = copy_project(tmp_path_factory.mktemp("project"))
    write_overrides(root / "params.yaml", TINY)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam",
                    "tiny params"], cwd=root, check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "MOFI_PARENT_RUN_ID")}
    env.update({"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "MOFI_TRACKING": "on",
                "PREFECT_HOME": str(root / ".prefect"), "MLFLOW_DISABLE_TELEMETRY": "true",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", **DUMMY_SECRETS})
    return Project(root, env)


@dataclass
class FirstRun:
    stdout: str
    params_text: str  # params.yaml and dvc.lock right after the run (later tests change them)
    lock_text: str


@pytest.fixture(scope="session")
def first_run(project) -> FirstRun:
    """``mofi run`` with one override, exactly as a user would type it."""
    proc = project.run("mofi", "run", "-S", "train.steps=12")
    return FirstRun(proc.stdout, (project.root / "params.yaml").read_text(),
                    (project.root / "dvc.lock").read_text())
