"""evaluate: every candidate against the paper's control (CLIP on raw alt-text), same sets.

Per model: GPR1200-protocol retrieval (mAP, per seen/unseen class and — on the real benchmark —
per domain, Recall@1/5), zero-shot over entity names (models with a text tower) and a linear
probe on a labelled ImageFolder split. Outputs: ``metrics/evaluate.json`` (DVC metrics, so
``dvc metrics diff`` compares runs), ``reports/evaluate.md`` (one comparison table) and, with
``evaluate.pictures``, PNGs in ``reports/figures/`` (retrieval grid, t-SNE, PR curves) logged to
MLflow with the table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mofi_core.claims import model_rows
from mofi_core.config.evaluate import EvaluateConfig
from mofi_core.device import resolve_device
from mofi_core.evaluate.embed import DecodedImages, embed_files
from mofi_core.evaluate.retrieval import (
    gpr1200_domains,
    gpr_files,
    precision_recall_curve,
    retrieval_metrics,
)
from mofi_core.io.atomic import atomic_path
from mofi_core.io.hashing import dvc_hash_of_path
from mofi_core.kb.store import KBEntity, KnowledgeBase
from mofi_core.models.artifact import LoadedModel, check_model_folder
from mofi_core.recipes import CONTROL_MODEL, model_label

if TYPE_CHECKING:
    from mofi_core.context import StageContext

CONTROL = CONTROL_MODEL
SETTINGS = {"probe_c"}  # chosen hyper-parameters, reported but not compared as ratios


def read_classes(classes_file: Path | None) -> list[dict]:
    if classes_file is None or not classes_file.is_file():
        return []
    return json.loads(classes_file.read_text(encoding="utf-8"))


def class_partitions(rows: list[dict], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Query masks per benchmark partition from ``classes.json`` ({class, split} rows), if any."""
    if not rows:
        return {}
    split = {int(r["class"]): r["split"] for r in rows}
    missing = sorted(set(labels.tolist()) - set(split))
    if missing:
        raise ValueError(f"classes.json has no entry for benchmark classes {missing[:5]} "
                         f"({len(missing)} in all): it must list every category of the "
                         "benchmark folder it sits beside")
    names = np.array([split[int(c)] for c in labels])
    return {part: names == part for part in sorted(set(names))}


def class_kb(kb_path: Path | None, rows: list[dict]) -> KnowledgeBase | None:
    """The KB, plus benchmark classes it lacks (never-seen entities) from ``classes.json``,
    so zero-shot prompts use real names for every class."""
    kb = KnowledgeBase.open(kb_path) if kb_path and kb_path.is_dir() else None
    entities: dict[str, KBEntity] = {}
    for r in rows:
        eid = r.get("entity_id")
        if not eid or eid in entities:
            continue
        entities[eid] = (kb.get(eid) if kb is not None else None) or KBEntity(
            eid, r["name"], (), r.get("description", ""), r.get("type", ""))
    return KnowledgeBase(list(entities.values())) if entities else None


def _labelled(name: str, loaded: LoadedModel, labelled: Path | None, kb, cfg: EvaluateConfig,
              notes: list[str], decoded: DecodedImages) -> dict[str, float]:
    if labelled is None:
        return {}
    from mofi_core.evaluate.probe import evaluate_labelled

    with_desc = any("{description}" in p for p in cfg.prompts)
    metrics, more = evaluate_labelled(loaded, labelled, kb, cfg.prompts, cfg.batch_size,
                                      with_desc, cfg.probe_c, label=f"evaluate {name} labelled",
                                      decoded=decoded)
    notes.extend(f"{name}: {n}" for n in more)
    return metrics


def evaluate(models: dict[str, Path], gpr_dir: Path, cfg: EvaluateConfig,
             classes_file: Path | None = None, labelled_dir: Path | None = None,
             kb_path: Path | None = None, figures: Path | None = None) -> dict:
    """``{model: {metric: value}}``, ``<model>_vs_baseline`` ratios, ``notes`` and the
    benchmark's size; figures written to ``figures`` when given."""
    files, labels = gpr_files(gpr_dir)
    rows = read_classes(classes_file)
    partitions = class_partitions(rows, labels)
    kb = class_kb(kb_path, rows) if labelled_dir is not None else None
    results: dict = {"benchmark": {"images": len(files), "classes": len(set(labels.tolist()))}}
    notes: list[str] = []
    feats: dict[str, np.ndarray] = {}
    device = resolve_device(cfg.device)
    decoded = DecodedImages()  # the same files for every model: decoded once where they fit
    for name, folder in models.items():
        loaded = LoadedModel.load(folder, device)  # once: retrieval, probe and zero-shot share it
        feats[name] = embed_files(loaded, files, cfg.batch_size,
                                  label=f"evaluate {name} retrieval", decoded=decoded)
        results[name] = retrieval_metrics(feats[name], labels, partitions)
        results[name].update(_labelled(name, loaded, labelled_dir, kb, cfg, notes, decoded))
        del loaded  # one model in memory at a time
    for name in models:
        if name != CONTROL and CONTROL in results:
            results[f"{name}_vs_{CONTROL}"] = {
                k: v / results[CONTROL][k] if results[CONTROL].get(k) else None
                for k, v in results[name].items() if k in results[CONTROL] and k not in SETTINGS}
    if figures is not None:
        _pictures(figures, files, labels, feats, partitions)
    results["notes"] = notes
    return results


def _pictures(out: Path, files: list[Path], labels: np.ndarray,
              feats: dict[str, np.ndarray], partitions: dict[str, np.ndarray]) -> None:
    from mofi_core.evaluate import plots

    out.mkdir(parents=True, exist_ok=True)
    groups = None
    colour_by = gpr1200_domains(labels) or partitions  # the real benchmark: by domain
    if colour_by:
        groups = np.empty(len(labels), dtype=object)
        for part, mask in colour_by.items():
            groups[mask] = part
    for name, f in feats.items():
        plots.retrieval_grid(files, labels, f, out / f"retrieval_grid_{name}.png")
        plots.tsne_plot(f, labels, out / f"tsne_{name}.png", groups=groups)
    plots.pr_curves({n: precision_recall_curve(f, labels) for n, f in feats.items()},
                    out / "pr_curves.png")


def comparison_table(results: dict) -> str:
    """One markdown table: a row per metric, a column per model, and the ratio to the control."""
    models = list(model_rows(results))
    others = [m for m in models if m != CONTROL]
    metrics = list(dict.fromkeys(k for m in models for k in results[m]))
    head = ["metric", *(model_label(m) for m in models),
            *(f"{m} / {CONTROL}" for m in others if CONTROL in models)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in metrics:
        cells = [f"{results[m][k]:.4f}" if k in results[m] else "n/a" for m in models]
        if CONTROL in models:
            for m in others:
                r = results.get(f"{m}_vs_{CONTROL}", {}).get(k)
                cells.append(f"{r:.2f}×" if r else ("" if k in SETTINGS else "n/a"))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    b = results["benchmark"]
    notes = [f"- {n}" for n in results.get("notes", [])]
    return "\n".join([f"# Evaluation: {', '.join(models)} ({b['images']} retrieval images, "
                      f"{b['classes']} classes)", "",
                      "Candidates are the MOFI recipes of `train.recipes`, each trained for the "
                      "control's steps and batch; MOFI is the multi-task recipe, the paper's "
                      "final model. Zero-shot applies to models with a text tower.", "",
                      *lines, "", *notes, ""])


def _dir(value: str, default: Path, key: str) -> Path | None:
    if value.lower() == "none":
        return None
    path = Path(value) if value else default
    if not path.exists():
        hint = " (the demo benchmark: run the corpus stage, or set it to your folder)" \
            if not value else ""
        skip = " or 'none' to skip zero-shot and the probe" if key == "labelled_dir" else ""
        raise FileNotFoundError(f"evaluate: {path} does not exist{hint}; set evaluate.{key} "
                                f"in params.yaml to an existing folder{skip}")
    return path


def classes_file(gpr: Path, demo_gpr: Path, demo_classes: Path) -> Path | None:
    """The seen/unseen class list that belongs to this benchmark: the demo world's for the
    demo benchmark, else a ``classes.json`` inside the benchmark folder itself, else none --
    never the demo's list against another folder's categories."""
    if gpr.resolve() == demo_gpr.resolve():
        return demo_classes
    own = gpr / "classes.json"
    return own if own.is_file() else None


def candidates(ctx: StageContext) -> list[str]:
    """The candidate models of this run: ``train.recipes``, each in ``models/<recipe>``."""
    if ctx.params is None:
        raise ValueError(f"{ctx.spec.address} reads train.recipes: run it through the stage "
                         "runner (mofi evaluate)")
    return list(ctx.params.train.recipes)


def compared_models(ctx: StageContext) -> dict[str, Path]:
    """Every candidate, the extra models (``evaluate.extra_models``), then the control:
    ``{name: model folder}``."""
    lay = ctx.layout
    names = candidates(ctx)
    extra = list(ctx.params.evaluate.extra_models)
    clash = sorted(set(extra) & {*names, CONTROL})
    if clash:
        raise ValueError(f"evaluate.extra_models {clash} clash with a candidate or the control; "
                         "give the extra model folders other names")
    return {**{r: lay.model(r) for r in names}, **{m: lay.model(m) for m in extra},
            CONTROL: lay.baseline_model}


def check(cfg: EvaluateConfig, ctx: StageContext) -> None:
    """Before any embedding: every model folder loads, the benchmark folders exist."""
    lay = ctx.layout
    for name, folder in compared_models(ctx).items():
        extra = name in cfg.extra_models
        what = "the control CLIP" if name == CONTROL else (
            f"extra model {name}" if extra else f"candidate {name}")
        hint = "" if name == CONTROL else (
            " (evaluate.extra_models: make it with `mofi model import`)" if extra
            else f" (stage train@{name})")
        check_model_folder(folder, f"{what} ({folder}){hint}")
    gpr_files(_dir(cfg.gpr_dir, lay.gpr, "gpr_dir"))  # names checked before any embedding
    _dir(cfg.labelled_dir, lay.benchmark / "labelled", "labelled_dir")


def run(cfg: EvaluateConfig, ctx: StageContext) -> dict:
    """Stage ``evaluate``: every candidate and the control CLIP on retrieval, zero-shot and
    linear probe; a child MLflow run per model and one comparison chart."""
    lay = ctx.layout
    figures = lay.reports / "figures"  # a DVC output: recreated, empty without pictures
    if figures.exists():
        shutil.rmtree(figures)
    figures.mkdir(parents=True)
    gpr = _dir(cfg.gpr_dir, lay.gpr, "gpr_dir")
    results = evaluate(compared_models(ctx), gpr, cfg,
                       classes_file(gpr, lay.gpr, lay.benchmark / "classes.json"),
                       _dir(cfg.labelled_dir, lay.benchmark / "labelled", "labelled_dir"),
                       lay.kb, figures if cfg.pictures else None)
    # which benchmark the numbers are on: the registry compares versions only on the same one
    results["benchmark"]["digest"] = dvc_hash_of_path(gpr)
    ctx.tracker.log_dataset(gpr, "benchmark", "evaluation")
    rows = model_rows(results)
    for name, row in rows.items():  # one run per model: MLflow's compare view lines them up
        ctx.tracker.log_child(f"evaluate/{name}", row,
                              {"mofi.model": name, "mofi.model_label": model_label(name)})
    if cfg.pictures:
        from mofi_core.evaluate.plots import comparison_bars

        comparison_bars(rows, figures / "comparison.png",
                        {n: model_label(n) for n in rows})
    table = lay.reports / "evaluate.md"
    with atomic_path(table) as tmp:
        tmp.write_text(comparison_table(results), encoding="utf-8")
    ctx.artifacts.append(table)
    ctx.artifacts.extend(sorted(figures.glob("*.png")))
    return {k: v for k, v in results.items() if k != "notes"}
