"""evaluate: every model against the paper's control (CLIP on raw alt-text) on the same sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mofi_core.config import EvaluateConfig
from mofi_core.evaluate.embed import embed_files
from mofi_core.evaluate.retrieval import gpr_files, retrieval_metrics


def class_partitions(classes_file: Path | None, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Query masks per benchmark partition from ``classes.json`` ({class, split} rows), if any."""
    if classes_file is None or not classes_file.is_file():
        return {}
    rows = json.loads(classes_file.read_text(encoding="utf-8"))
    split = {int(r["class"]): r["split"] for r in rows}
    missing = sorted(set(labels.tolist()) - set(split))
    if missing:
        raise ValueError(f"{classes_file} has no entry for benchmark classes {missing[:5]}")
    names = np.array([split[int(c)] for c in labels])
    return {part: names == part for part in sorted(set(names))}


def evaluate(models: dict[str, Path], gpr_dir: Path, cfg: EvaluateConfig,
             classes_file: Path | None = None) -> dict:
    """``{model name: {metric: value}}`` plus ``mofi_vs_baseline`` ratios of each metric."""
    files, labels = gpr_files(gpr_dir)
    partitions = class_partitions(classes_file, labels)
    results: dict = {"benchmark": {"images": len(files), "classes": len(set(labels))}}
    for name, folder in models.items():
        feats = embed_files(folder, files, cfg.batch_size, cfg.device)
        results[name] = retrieval_metrics(feats, labels, partitions)
    if "mofi" in results and "baseline" in results:
        results["mofi_vs_baseline"] = {
            k: results["mofi"][k] / results["baseline"][k] if results["baseline"][k] else None
            for k in results["mofi"]}
    return results


def run(cfg: EvaluateConfig, ctx) -> dict:
    """Stage ``evaluate``: GPR1200-protocol retrieval, MOFI vs the baseline CLIP."""
    lay = ctx.layout
    results = evaluate({"mofi": lay.mofi_model, "baseline": lay.baseline_model}, lay.gpr, cfg,
                       lay.benchmark / "classes.json")
    return results
