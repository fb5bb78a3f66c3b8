"""Flow ``mofi``: one Prefect task per DVC stage, in DAG order.

Each task runs ``dvc repro --single-item <stage>`` in the project folder, so DVC decides whether
the stage is up to date (skipped) or must run, and records what it ran in ``dvc.lock``. The flow
opens one MLflow parent run; every stage's run nests under it. A markdown artifact summarises
the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.pipeline import stage_order, write_overrides
from mofi_core import tracking
from mofi_core.io.layout import Layout


class StageFailed(RuntimeError):
    pass


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=5)
def run_stage(stage: str, project_dir: str, parent_run_id: str | None) -> dict[str, Any]:
    """``dvc repro -s <stage>``; its output streams into the task log line by line."""
    logger = get_run_logger()
    env = dict(os.environ)
    if parent_run_id:
        env["MOFI_PARENT_RUN_ID"] = parent_run_id
    start = time.perf_counter()
    proc = subprocess.Popen(["dvc", "repro", "--single-item", stage], cwd=project_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def summarise(layout: Layout, stages: list[dict]) -> dict[str, Any]:
    evaluation = _read_json(layout.metrics("evaluate"))
    registry = _read_json(layout.reports / "register.json")
    report = layout.reports / "quality.md"
    docs = layout.reports / "data_docs" / "index.html"
    return {"stages": stages,
            "mofi": evaluation.get("mofi", {}), "baseline": evaluation.get("baseline", {}),
            "model": registry,
            "validation": _read_json(layout.reports / "validate.json").get("summary", {}),
            "data_docs": docs.as_uri() if docs.is_file() else "",
            "report": report.read_text(encoding="utf-8") if report.is_file() else ""}


def summary_markdown(summary: dict[str, Any], overrides: dict[str, Any]) -> str:
    lines = ["# MOFI pipeline run", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in summary["stages"]]
    lines += ["", "## Retrieval (GPR1200 protocol)", "", "| model | mAP | R@1 | R@5 |",
              "|---|---|---|---|"]
    for name in ("mofi", "baseline"):
        m = summary[name]
        if m:
            lines.append(f"| {name} | {m['gpr_map']:.4f} | {m['recall_at_1']:.4f} | "
                         f"{m['recall_at_5']:.4f} |")
    check = summary.get("validation") or {}
    if check:
        verdict = "passed" if check.get("success") else "**FAILED** (training did not run)"
        lines += ["", f"## Data validation: {verdict}", "",
                  f"{check['expectations']} expectations, {check['failed']} failed, "
                  f"{check['warnings']} warnings (not blocking)."]
    if summary.get("data_docs"):
        lines += ["", f"[great-expectations Data Docs]({summary['data_docs']}) — also an "
                      "artifact (`data_docs/`) of the `validate` run in MLflow."]
    model = summary["model"]
    if model:
        lines += ["", f"Registered **{model['model_name']}** version {model['version']} "
                      f"(champion: version {model['champion']}, promoted: {model['promoted']})."]
    if overrides:
        lines += ["", "Overrides: `" + json.dumps(overrides, sort_keys=True) + "`"]
    if summary.get("report"):
        lines += ["", summary["report"].replace("# MOFI demo-world report", "## Report")]
    return "\n".join(lines)


@flow(name="mofi", log_prints=True)
def mofi(overrides: dict[str, Any] | None = None, project_dir: str | None = None,
         retries: int = 1) -> dict[str, Any]:
    """Run every DVC stage of the project in ``project_dir`` (default: the working folder).

    ``overrides`` maps dotted params keys to values, e.g. ``{"train.steps": 50}``; they are
    validated, written into params.yaml (as ``dvc exp run -S`` does) and recorded in MLflow.
    """
    layout = Layout(Path(project_dir or os.getcwd()).resolve())
    overrides = overrides or {}
    write_overrides(layout.root / "params.yaml", overrides)
    order = stage_order(layout.root / "dvc.yaml")
    results: list[dict] = []
    try:
        with tracking.run("pipeline", layout.root, tags={"mofi.kind": "pipeline"}) as tracker:
            tracker.log_params({f"override.{k}": v for k, v in overrides.items()})
            tracker.set_tags({"mofi.overrides": json.dumps(overrides, sort_keys=True)})
            for stage in order:
                try:
                    results.append(run_stage.with_options(retries=retries)(
                        stage, str(layout.root), tracker.run_id))
                except StageFailed:
                    results.append({"stage": stage, "status": "FAILED", "seconds": ""})
                    raise
            summary = summarise(layout, results)
            tracker.log_metrics({"mofi": summary["mofi"], "baseline": summary["baseline"]})
            tracker.log_metrics({f"seconds.{r['stage']}": r["seconds"] for r in results})
    finally:  # a failed run gets its summary too: which stage failed, the gate's evidence
        summary = summarise(layout, results)
        create_markdown_artifact(markdown=summary_markdown(summary, overrides),
                                 key="mofi-run-summary", description="stages, metrics, model")
        if summary["data_docs"]:
            create_link_artifact(link=summary["data_docs"], link_text="Data Docs",
                                 key="mofi-data-docs",
                                 description="great-expectations validation of this run's data")
    return summary
