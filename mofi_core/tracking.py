"""Experiment tracking behind a small protocol: an MLflow backend and a null backend.

Nothing is configured at import time. Tracking settings are not stage params (changing where runs
are logged must not re-run a stage), so they come from the environment:

- ``MLFLOW_TRACKING_URI``: default ``sqlite:///<project>/.mlflow/mlflow.db`` (artifacts in
  ``<project>/.mlflow/artifacts``);
- ``MOFI_EXPERIMENT``: experiment name, default ``mofi``;
- ``MOFI_PARENT_RUN_ID``: set by the Prefect flow so each stage's run nests under the pipeline run;
- ``MOFI_TRACKING=off``: use the null backend.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

DEFAULT_EXPERIMENT = "mofi"


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...


class NullTracker:
    run_id = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


class MlflowTracker:
    def __init__(self, run_id: str) -> None:
        import mlflow

        self._mlflow = mlflow
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._mlflow.log_params({k: str(v) for k, v in flatten(params).items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in flatten(metrics).items()
                   if isinstance(v, int | float) and not isinstance(v, bool)
                   and math.isfinite(float(v))}
        self._mlflow.log_metrics(numeric, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow.set_tags(dict(tags))


def is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun launch: only rank 0 tracks and writes."""
    return os.environ.get("RANK", "0") == "0"


def tracking_enabled() -> bool:
    if not is_main_process():
        return False
    return os.environ.get("MOFI_TRACKING", "on").lower() not in ("off", "0", "false")


def configure(root: Path) -> str:
    """Point MLflow at the project's store (unless MLFLOW_TRACKING_URI says otherwise) and make
    sure the experiment exists with its artifacts next to the database. Returns experiment id."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    store = (root / ".mlflow").resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name = os.environ.get("MOFI_EXPERIMENT", DEFAULT_EXPERIMENT)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = (store / "artifacts").as_uri() if uri.startswith("sqlite:") else None
    return mlflow.create_experiment(name, artifact_location=artifacts)


def _owner_tags() -> dict[str, str]:
    """Who runs this: host, pid and the process start time (a reused pid has another)."""
    import psutil

    return {"mofi.host": socket.gethostname(), "mofi.pid": str(os.getpid()),
            "mofi.proc_start": f"{psutil.Process().create_time():.3f}"}


def _owner_alive(tags: Mapping[str, str]) -> bool | None:
    """True/False for runs started on this host; None when that cannot be known."""
    from mofi_core.io.atomic import process_alive

    if tags.get("mofi.host") != socket.gethostname() or "mofi.pid" not in tags:
        return None
    try:
        return process_alive(int(tags["mofi.pid"]), float(tags.get("mofi.proc_start", "nan")))
    except ValueError:
        return False


def end_orphan_runs(experiment_id: str) -> list[str]:
    """Mark FAILED every run still 'RUNNING' whose process on this host is gone (killed -9,
    OOM, power loss): the next run of any stage cleans up after the crash. Runs owned by other
    hosts are left alone. Returns the run ids ended."""
    from mlflow import MlflowClient

    client = MlflowClient()
    ended = []
    for r in client.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                max_results=1000):
        if _owner_alive(r.data.tags) is False:
            client.set_tag(r.info.run_id, "mofi.ended_by",
                           f"recovery: process {r.data.tags['mofi.pid']} was gone when "
                           f"pid {os.getpid()} started")
            client.set_terminated(r.info.run_id, status="FAILED")
            ended.append(r.info.run_id)
    if ended:
        print(f"tracking: ended {len(ended)} run(s) left RUNNING by a killed process as FAILED: "
              f"{', '.join(ended)}")
    return ended


@contextlib.contextmanager
def run(name: str, root: Path, tags: Mapping[str, str] | None = None) -> Iterator[Tracker]:
    """A tracking run named ``name``; nested under ``MOFI_PARENT_RUN_ID`` when that is set.
    The run ends FAILED if the body raises, so no run is left 'RUNNING' by a crash we see;
    runs of processes killed outright are ended FAILED by the next run (``end_orphan_runs``)."""
    if not tracking_enabled():
        yield NullTracker()
        return
    import mlflow

    experiment_id = configure(root)
    end_orphan_runs(experiment_id)
    parent = os.environ.get("MOFI_PARENT_RUN_ID") or None
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=parent,
                          nested=parent is not None,
                          tags={**_owner_tags(), **(tags or {})}) as active:
        yield MlflowTracker(active.info.run_id)
