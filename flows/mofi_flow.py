"""Flow ``mofi``: one Prefect task per DVC stage, scheduled on DVC's own stage graph.

Each task runs ``dvc --wait-for-lock repro --single-item <stage>`` in the project folder, so DVC
decides whether the stage is up to date (skipped) or must run, and records what it ran in
``dvc.lock``. The flow opens one MLflow parent run; every stage's run nests under it
(``MOFI_PARENT_RUN_ID``) and knows the flow run's name (``MOFI_RUN_NAME``). A markdown artifact
summarises the run and links its MLflow run and the Data Docs in the MLflow UI.

What runs in parallel, and why it is safe
    Stage order and readiness come from DVC's graph (:func:`flows.pipeline.stage_needs`). A
    stage starts once every stage it depends on has finished; stages DVC allows in parallel (in
    this project ``ner`` and ``baseline`` after ``ingest``; ``report`` and ``register`` after
    ``evaluate``) start together when ``max_parallel`` > 1 (default: 1 on a machine with two
    cores or fewer, else 2). DVC supports two ``dvc repro`` of independent stages in one repo:
    it holds its repo lock (``.dvc/tmp/lock``) only while it plans and while it saves
    ``dvc.lock`` and the cache, and releases it while the stage's command runs
    (``dvc.stage.run.run_stage`` wraps the command in ``unlocked_repo``); per-path read/write
    locks (``.dvc/tmp/rwlock``) stop two commands from writing the same output or reading one
    being written, which independent stages never do. A second process that finds the repo
    lock taken gives up after 3 s unless it is started with ``--wait-for-lock``, hence that
    flag: the short locked sections queue instead of failing. Measured on a scratch repo with two
    8 s stages started 0.5 s apart: both finished 8.6 s and 9.1 s after the first start, and
    ``dvc.lock`` recorded both. The stage programs then share the machine (cores, memory, the
    MLflow database) - hence one at a time on a small machine.

Per-run overrides
    ``overrides`` apply to this run only: validated, written into ``params.yaml`` for the run
    (DVC must see them, so that ``dvc.lock`` records what produced the outputs), and the file is
    put back byte for byte when the run ends, whatever the outcome. Before that, a successful
    run is recorded as a DVC experiment named after the flow run (``dvc exp save``; listed by
    ``dvc exp show`` with its params and metrics) when the project is a git repo with a commit,
    and always on the MLflow parent run (``override.*`` params, ``mofi.overrides`` tag).
    Afterwards ``dvc.lock`` and the outputs in the workspace are the overridden run's while
    ``params.yaml`` is the checkout's: that is the honest state, and ``dvc status`` shows it; the
    next ``dvc repro`` or flow run re-runs the stages the overrides changed. The same holds for
    ``mofi run -S key=value`` (it calls this flow) and for ``-p overrides=...`` of a deployment
    run. One flow run at a time per project folder (an OS lock under ``.mofi/flow/``), so no run
    sees another's overrides; a run killed outright leaves a copy of the original there, which
    the next run restores.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import (
    default_run_name,
    experiment_name,
    git_baseline,
    project_lock,
    ready_stages,
    recover_params,
    run_overrides,
    save_experiment,
    stage_needs,
    topological,
)
from mofi_core import tracking
from mofi_core.claims import model_rows
from mofi_core.io.layout import Layout
from mofi_core.recipes import model_label

MLFLOW_UI_ENV = "MOFI_MLFLOW_UI_URL"
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"  # what `mofi ui` serves


class StageFailed(RuntimeError):
    pass


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=5)
def run_stage(stage: str, project_dir: str, parent_run_id: str | None,
              run_name: str | None = None) -> dict[str, Any]:
    """``dvc repro -s <stage>``; its output streams into the task log line by line."""
    logger = get_run_logger()
    env = dict(os.environ)
    if parent_run_id:
        env["MOFI_PARENT_RUN_ID"] = parent_run_id
    if run_name:
        env["MOFI_RUN_NAME"] = run_name
    start = time.perf_counter()
    proc = subprocess.Popen(["dvc", "--wait-for-lock", "repro", "--single-item", stage],
                            cwd=project_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ran = False
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            logger.info(line)
        ran = ran or f"Running stage '{stage}'" in line
    code = proc.wait()
    if code != 0:
        raise StageFailed(f"stage {stage!r} failed: 'dvc repro -s {stage}' exited {code}; "
                          "its output is in this task's log")
    return {"stage": stage, "status": "ran" if ran else "skipped",
            "seconds": round(time.perf_counter() - start, 1)}


def default_max_parallel() -> int:
    """Stages at once when the caller does not say: 1 on two cores or fewer, else 2."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 1 if (cores or 1) <= 2 else 2


def run_stages(needs: dict[str, tuple[str, ...]], project_dir: str, parent_run_id: str | None,
               run_name: str, max_parallel: int, retries: int
               ) -> tuple[dict[str, dict], BaseException | None]:
    """Run the stages of ``needs`` (stage -> stages it waits for) as Prefect tasks, each as soon
    as its upstream stages are done, at most ``max_parallel`` at once. After a failure no new
    stage starts; the ones running finish. Returns each started stage's result row and the
    first failure (None if none)."""
    stage_task = run_stage.with_options(retries=retries)
    finished: queue.Queue = queue.Queue()
    results: dict[str, dict] = {}
    done: set[str] = set()
    started: set[str] = set()
    running = 0
    failure: BaseException | None = None
    while True:
        if failure is None:
            for stage in ready_stages(needs, done, started)[:max_parallel - running]:
                future = stage_task.submit(stage, project_dir, parent_run_id, run_name)
                future.add_done_callback(lambda f, s=stage: finished.put((s, f)))
                started.add(stage)
                running += 1
        if not running:
            return results, failure
        stage, future = finished.get()
        running -= 1
        try:
            results[stage] = future.result()
            done.add(stage)
        except Exception as err:  # StageFailed, or the task could not run at all
            results[stage] = {"stage": stage, "status": "FAILED", "seconds": ""}
            failure = failure or err


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def mlflow_ui() -> str:
    return (os.environ.get(MLFLOW_UI_ENV) or DEFAULT_MLFLOW_UI).rstrip("/")


def run_url(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page in the MLflow UI (its hash routes ``/experiments/:id/runs/:run`` and
    ``.../runs/:run/artifacts/<path>``, the URLs MLflow prints and its UI builds)."""
    url = f"{mlflow_ui()}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{url}/artifacts/{artifact}" if artifact else url


def mlflow_links(parent_run_id: str | None) -> dict[str, str]:
    """``run``: the pipeline run's page; ``data_docs``: the Data Docs logged by the latest
    ``validate`` stage run of the experiment (artifact ``data_docs/index.html``). Best effort:
    a tracking store that cannot answer leaves the links out, never fails the flow."""
    if not parent_run_id:
        return {}
    from mlflow import MlflowClient

    links: dict[str, str] = {}
    try:
        client = MlflowClient()
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        links["run"] = run_url(experiment_id, parent_run_id)
        latest = client.search_runs([experiment_id], "tags.`mofi.stage` = 'validate'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        if latest:
            validate_id = latest[0].info.run_id
            names = {a.path for a in client.list_artifacts(validate_id, "data_docs")}
            if "data_docs/index.html" in names:
                links["data_docs"] = run_url(experiment_id, validate_id,
                                             "data_docs/index.html")
    except Exception as err:  # links are a convenience
        print(f"MLflow links left out of the summary: {type(err).__name__}: {err}")
    return links


def summarise(layout: Layout, stages: list[dict], links: dict[str, str] | None = None
              ) -> dict[str, Any]:
    evaluation = _read_json(layout.metrics("evaluate")).get("evaluate", {})
    registry = _read_json(layout.reports / "register.json")
    report = layout.reports / "quality.md"
    links = links or {}
    docs = layout.reports / "data_docs" / "index.html"
    return {"stages": stages,
            "models": model_rows(evaluation),  # every candidate, then the control: {name: metrics}
            "model": registry,
            "validation": _read_json(layout.reports / "validate.json").get("summary", {}),
            "mlflow_run": links.get("run", ""),
            "data_docs": links.get("data_docs", ""),
            "data_docs_local": docs.is_file(),
            "report": report.read_text(encoding="utf-8") if report.is_file() else ""}


def summary_markdown(summary: dict[str, Any], overrides: dict[str, Any]) -> str:
    lines = ["# MOFI pipeline run", ""]
    if summary.get("mlflow_run"):
        lines += [f"MLflow: [pipeline run {summary.get('run_name', '')}]"
                  f"({summary['mlflow_run']}) (each stage's run is nested under it)", ""]
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in summary["stages"]]
    lines += ["", "## Every model on the benchmark (GPR1200 protocol)", "",
              "| model | mAP | R@1 | zero-shot top-1 | linear probe top-1 |",
              "|---|---|---|---|---|"]
    for name, m in summary["models"].items():
        cells = [m.get(k) for k in ("gpr_map", "recall_at_1", "zero_shot_top1", "probe_top1")]
        lines.append(f"| {model_label(name)} | " + " | ".join(
            "n/a" if v is None else f"{v:.4f}" for v in cells) + " |")
    check = summary.get("validation") or {}
    if check:
        verdict = "passed" if check.get("success") else "**FAILED** (training did not run)"
        lines += ["", f"## Data validation: {verdict}", "",
                  f"{check['expectations']} expectations, {check['failed']} failed, "
                  f"{check['warnings']} warnings (not blocking)."]
    if summary.get("data_docs"):
        lines += ["", f"[great-expectations Data Docs]({summary['data_docs']}) in the MLflow UI "
                      "(artifact `data_docs/` of the latest `validate` run)."]
    elif summary.get("data_docs_local"):
        lines += ["", "great-expectations Data Docs: `reports/data_docs/index.html` in the "
                      "project folder (no MLflow run to link them from: tracking is off)."]
    model = summary["model"]
    if model.get("candidates"):
        versions = ", ".join(f"{n} v{d['version']}" for n, d in model["candidates"].items())
        lines += ["", f"Registered **{model['model_name']}**: {versions}; best this run: "
                      f"{model['best']} (promoted: {model['promoted']}); champion: version "
                      f"{model['champion']}."]
    if overrides:
        lines += ["", "Overrides: `" + json.dumps(overrides, sort_keys=True) + "`"]
        if summary.get("overrides_record"):
            lines += ["", summary["overrides_record"]]
    if summary.get("report"):
        lines += ["", summary["report"].replace("# MOFI demo-world report", "## Report")]
    return "\n".join(lines)


def flow_run_name() -> str:
    """The Prefect flow run's name (``prefect.runtime``), else ``mofi-<UTC time>``."""
    from prefect.runtime import flow_run

    return flow_run.name or default_run_name()


def record_overrides(root: Path, overrides: dict[str, Any], run_name: str
                     ) -> tuple[str, dict[str, str]]:
    """Save this run's state as a DVC experiment (while params.yaml holds the overrides).
    Returns the line to print and the experiment (empty when not recorded)."""
    shown = json.dumps(overrides, sort_keys=True)
    scope = "applied to this run only"
    if git_baseline(root) is None:
        return (f"overrides {shown} {scope} and not recorded as a DVC experiment ({root} is "
                "not a git repo with a commit; the MLflow run has them as override.* params)",
                {})
    name = experiment_name(run_name)
    try:
        exp = save_experiment(root, name, f"mofi flow run {run_name}: overrides {shown}")
    except RuntimeError as err:
        return f"overrides {shown} {scope}; NOT recorded as a DVC experiment: {err}", {}
    return (f"overrides {shown} {scope}; recorded as DVC experiment '{exp['name']}' (commit "
            f"{exp['commit'][:7]} on {exp['baseline'][:7]}, git ref {exp['ref']} in {root}): "
            f"`dvc exp show` lists it with its params and metrics, "
            f"`dvc exp apply {exp['name']}` brings it back; params.yaml is put back as it was",
            exp)


@flow(name="mofi", log_prints=True, task_runner=ThreadPoolTaskRunner())
def mofi(overrides: dict[str, Any] | None = None, project_dir: str | None = None,
         retries: int = 1, max_parallel: int | None = None) -> dict[str, Any]:
    """Run every DVC stage of the project in ``project_dir`` (default: the working folder).

    ``overrides`` maps dotted params keys to values, e.g. ``{"train.steps": 50}``: validated,
    in ``params.yaml`` for this run only (restored byte for byte afterwards), recorded as a DVC
    experiment named after the flow run (git projects) and on the MLflow run.
    ``max_parallel``: how many of the stages DVC allows to run together may run at once
    (default: 1 on two cores or fewer, else 2). ``retries``: of a failed stage.
    """
    layout = Layout(Path(project_dir or os.getcwd()).resolve())
    params_file = layout.root / "params.yaml"
    overrides = overrides or {}
    parallel = default_max_parallel() if max_parallel is None else max_parallel
    if parallel < 1:
        raise ValueError(f"max_parallel must be at least 1, not {max_parallel}")
    run_name = flow_run_name()
    with project_lock(layout.root):
        note = recover_params(params_file)
        if note:
            print(note)
        needs = stage_needs(layout.root)
        # validates, writes; when the block is left, params.yaml is the checkout's again
        with run_overrides(params_file, overrides, run_name):
            return _run(layout, needs, overrides, run_name, parallel, retries)


def _run(layout: Layout, needs: dict[str, tuple[str, ...]], overrides: dict[str, Any],
         run_name: str, parallel: int, retries: int) -> dict[str, Any]:
    order = topological(needs)
    results: dict[str, dict] = {}
    parent_run_id: str | None = None
    record = ""
    print(f"flow run {run_name}: stages {', '.join(order)}; at most {parallel} at once")
    try:
        with tracking.run("pipeline", layout.root, tags={"mofi.kind": "pipeline",
                                                          "mofi.run_name": run_name}) as tracker:
            parent_run_id = tracker.run_id
            tracker.log_params({f"override.{k}": v for k, v in overrides.items()})
            tracker.set_tags({"mofi.overrides": json.dumps(overrides, sort_keys=True)})
            results, failure = run_stages(needs, str(layout.root), parent_run_id, run_name,
                                          parallel, retries)
            # what the stages ran with (params.yaml still holds the overrides) and what DVC
            # recorded of it: the parent run answers "which params and data versions"
            for name in ("params.yaml", "dvc.lock"):
                if (layout.root / name).is_file():
                    tracker.log_artifact(layout.root / name)
            if failure is not None:
                raise failure
            summary = summarise(layout, [results[s] for s in order])
            tracker.log_metrics(summary["models"])
            # MLflow names take no "@": train@multitask is seconds.train.multitask
            tracker.log_metrics({f"seconds.{s.replace('@', '.')}": r["seconds"]
                                 for s, r in results.items()})
            if overrides:
                record, exp = record_overrides(layout.root, overrides, run_name)
                print(record)
                tracker.set_tags({"mofi.dvc_experiment": exp["name"]} if exp else
                                 {"mofi.dvc_experiment": "not recorded"})
    finally:  # a failed run gets its summary too: which stage failed, the gate's evidence
        if overrides and not record:
            record = (f"overrides {json.dumps(overrides, sort_keys=True)} applied to this run "
                      "only; the run did not finish, so it is not recorded as a DVC experiment")
            print(record)
        rows = [results.get(s, {"stage": s, "status": "not run", "seconds": ""})
                for s in order]
        summary = summarise(layout, rows, mlflow_links(parent_run_id))
        summary["run_name"] = run_name
        summary["overrides_record"] = record
        create_markdown_artifact(markdown=summary_markdown(summary, overrides),
                                 key="mofi-run-summary", description="stages, metrics, model")
        if summary["mlflow_run"]:
            create_link_artifact(link=summary["mlflow_run"], link_text="MLflow run",
                                 key="mofi-mlflow-run",
                                 description="the pipeline's MLflow run (stage runs nested)")
        if summary["data_docs"]:
            create_link_artifact(link=summary["data_docs"], link_text="Data Docs",
                                 key="mofi-data-docs",
                                 description="great-expectations validation, in the MLflow UI")
    return summary
