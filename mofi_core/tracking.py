"""Experiment tracking behind a small protocol: an MLflow backend and a null backend.

Nothing is configured at import time. Tracking settings are not stage params (changing where runs
are logged must not re-run a stage), so they come from the environment:

- ``MLFLOW_TRACKING_URI``: default ``sqlite:///<project>/mlflow.db``, MLflow's own default
  location seen from the project root, so a plain ``mlflow ui`` or
  ``mlflow.pyfunc.load_model("models:/mofi-encoder@champion")`` run there finds the runs and the
  registry (artifacts in ``<project>/mlartifacts``, the folder ``mlflow server`` uses);
- ``MOFI_EXPERIMENT``: experiment name, default ``mofi``;
- ``MOFI_PARENT_RUN_ID``: set by the Prefect flow so each stage's run nests under the pipeline run;
  under ``dvc exp run`` (``DVC_EXP_NAME`` set) the stages nest under a run named for the
  experiment instead;
- ``MOFI_TRACKING=off``: use the null backend.

Every run records the code it ran: ``mlflow.source.git.commit`` is set explicitly (MLflow's own
detection skips it, the entry point lives in the git-ignored venv) with ``mofi.git_dirty``, which
ignores the files the pipeline itself rewrites (dvc.lock, metrics/, plots/, reports/).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

DEFAULT_EXPERIMENT = "mofi"
STORE_DB = "mlflow.db"  # MLflow's default tracking URI is sqlite:///mlflow.db in the cwd
ARTIFACTS = "mlartifacts"  # beside the database, as `mlflow server` keeps them
# the MLflow UI opens an experiment in its classic (training) view only with this tag
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# what the pipeline itself rewrites: a run that changed them is not "dirty" code
PRODUCTS = ("dvc.lock", "metrics", "plots", "reports")


class NoTrackingStore(FileNotFoundError):
    """A command that reads runs or the registry found no tracking store where it looked."""


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_dataset(self, path: Path, name: str, context: str) -> None: ...
    def log_child(self, name: str, metrics: Mapping[str, Any],
                  tags: Mapping[str, str]) -> None: ...


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

    def log_dataset(self, path: Path, name: str, context: str) -> None:
        pass

    def log_child(self, name: str, metrics: Mapping[str, Any],
                  tags: Mapping[str, str]) -> None:
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

    def log_dataset(self, path: Path, name: str, context: str) -> None:
        """An input of this run as an MLflow dataset whose digest is the DVC hash of the
        local folder/file (the value dvc.lock records for it)."""
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        from mofi_core.io.hashing import dvc_hash_of_path

        path = Path(path).resolve()
        with warnings.catch_warnings():  # several local source kinds match a plain path
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(path))
        dataset = MetaDataset(source, name=name, digest=dvc_hash_of_path(path))
        self._mlflow.log_input(dataset, context=context)

    def log_child(self, name: str, metrics: Mapping[str, Any],
                  tags: Mapping[str, str]) -> None:
        """A finished run nested under this one holding ``metrics`` (one per compared model:
        the UI's compare view and charts then line the models up)."""
        client = self._mlflow.MlflowClient()
        parent = client.get_run(self.run_id)
        child = client.create_run(parent.info.experiment_id, run_name=name, tags={
            "mlflow.parentRunId": self.run_id, **{k: v for k, v in parent.data.tags.items()
                                                 if k.startswith(("mlflow.source.git",
                                                                  "mofi.git"))},
            **tags})
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        client.log_batch(child.info.run_id, metrics=[
            Metric(k, float(v), now, 0) for k, v in flatten(metrics).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(float(v))])
        client.set_terminated(child.info.run_id, "FINISHED")


def is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun launch: only rank 0 tracks and writes."""
    return os.environ.get("RANK", "0") == "0"


def tracking_enabled() -> bool:
    if not is_main_process():
        return False
    return os.environ.get("MOFI_TRACKING", "on").lower() not in ("off", "0", "false")


# URIs this process set: mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which must not
# then pass for the user's choice when another project root is configured
_SET_HERE: set[str] = set()


def store_uri(root: Path) -> str:
    """The tracking URI for project ``root``: ``MLFLOW_TRACKING_URI`` or the project's store."""
    chosen = os.environ.get("MLFLOW_TRACKING_URI")
    if chosen and chosen not in _SET_HERE:
        return chosen
    return f"sqlite:///{(Path(root) / STORE_DB).resolve()}"


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _move_old_store(root: Path) -> None:
    """Stores made before the database moved to the project root (``.mlflow/mlflow.db``) are
    moved there once; their artifacts stay where the runs recorded them."""
    old, new = root / ".mlflow" / STORE_DB, root / STORE_DB
    chosen = os.environ.get("MLFLOW_TRACKING_URI")
    if old.is_file() and not new.exists() and (not chosen or chosen in _SET_HERE):
        os.replace(old, new)
        print(f"tracking: moved the MLflow store {old} to {new} (MLflow's default location, "
              "so plain `mlflow ui` run here finds it)")


def registry_hint(root: Path) -> str:
    """What to do when a command finds no runs or models where it looked."""
    return (f"looked in {store_uri(root)} (project root {Path(root).resolve()}); run the "
            "command from the project root, pass --root PROJECT, or set MLFLOW_TRACKING_URI "
            "to the store that holds the pipeline's runs")


def configure(root: Path, create: bool = True) -> str:
    """Point MLflow at the project's store (unless MLFLOW_TRACKING_URI says otherwise) and make
    sure the experiment exists, tagged for MLflow's training view, with its artifacts next to
    the database. ``create=False`` (commands that only read): a missing sqlite store raises
    :class:`NoTrackingStore` instead of creating an empty one. Returns the experiment id."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    root = Path(root).resolve()
    _move_old_store(root)
    uri = store_uri(root)
    db = _sqlite_file(uri)
    if db is not None and not db.is_file() and not create:
        raise NoTrackingStore(f"no MLflow store: {registry_hint(root)}")
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    if os.environ.get("MLFLOW_TRACKING_URI") != uri:
        _SET_HERE.add(uri)
    mlflow.set_tracking_uri(uri)
    name = os.environ.get("MOFI_EXPERIMENT", DEFAULT_EXPERIMENT)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        if not create:
            raise NoTrackingStore(f"no experiment {name!r} in the MLflow store: "
                                  f"{registry_hint(root)}")
        # a sqlite store keeps artifacts beside it (never in ./mlruns of the working folder)
        artifacts = (db.parent / ARTIFACTS).as_uri() if db is not None else None
        experiment_id = mlflow.create_experiment(name, artifact_location=artifacts,
                                                 tags=dict([EXPERIMENT_KIND]))
        return experiment_id
    if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1] and create:
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(root: Path) -> dict[str, str]:
    """The commit the project folder is at and whether its code or params differ from it
    (``{}`` outside a git checkout). The pipeline's own products are not counted as changes."""
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return {}
    changed = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".",
                   *(f":(exclude){p}" for p in PRODUCTS))
    tags = {"mlflow.source.git.commit": commit.strip(),
            "mofi.git_dirty": "unknown" if changed is None else str(bool(changed.strip()))
            .lower()}
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch.strip() != "HEAD":
        tags["mlflow.source.git.branch"] = branch.strip()
    return tags


def git_commit(root: Path) -> str:
    """``<sha>``, ``<sha>-dirty`` when code or params differ from it, or ``unknown``."""
    state = git_state(root)
    if not state:
        return "unknown"
    sha = state["mlflow.source.git.commit"]
    return sha + ("-dirty" if state["mofi.git_dirty"] == "true" else "")


def experiment_parent(experiment_id: str, root: Path) -> str | None:
    """Under ``dvc exp run``: the run named for the DVC experiment that this stage's run nests
    under (created by the first stage of the experiment). None outside an experiment."""
    name = os.environ.get("DVC_EXP_NAME")
    if not name:
        return None
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.search_runs([experiment_id], f"tags.`mofi.dvc_exp` = '{name}'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    baseline = os.environ.get("DVC_EXP_BASELINE_REV", "")
    tags = {"mofi.kind": "dvc-experiment", "mofi.dvc_exp": name,
            "mofi.dvc_exp_baseline": baseline, **git_state(root),
            "mlflow.note.content": f"DVC experiment `{name}` (baseline commit {baseline[:12]}): "
                                   "its stages' runs are nested here; compare experiments "
                                   "with `dvc exp show`."}
    parent = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = parent.info.run_id
    for key, value in params_changed(root, baseline or "HEAD").items():
        client.log_param(run_id, f"override.{key}", value)
    for name_ in ("params.yaml",):
        if (root / name_).is_file():
            client.log_artifact(run_id, str(root / name_))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def params_changed(root: Path, base: str = "HEAD") -> dict[str, str]:
    """Dotted params whose value in the working ``params.yaml`` differs from commit ``base``
    (``{}`` when git has no such file): what a DVC experiment or a run override changed."""
    import yaml

    path = root / "params.yaml"
    old = _git(root, "show", f"{base}:params.yaml")
    if old is None or not path.is_file():
        return {}
    before = flatten(yaml.safe_load(old) or {})
    after = flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return {k: str(after.get(k, "(removed)")) for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)}


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
    parent = os.environ.get("MOFI_PARENT_RUN_ID") or experiment_parent(experiment_id,
                                                                        Path(root).resolve())
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=parent,
                          nested=parent is not None,
                          tags={**_owner_tags(), **git_state(Path(root).resolve()),
                                **(tags or {})}) as active:
        yield MlflowTracker(active.info.run_id)
