"""evaluate: every model against the paper's control (CLIP on raw alt-text) on the same sets."""

from __future__ import annotations

from pathlib import Path

from mofi_core.config import EvaluateConfig
from mofi_core.evaluate.embed import embed_files
from mofi_core.evaluate.retrieval import gpr_files, retrieval_metrics


def evaluate(models: dict[str, Path], gpr_dir: Path, cfg: EvaluateConfig) -> dict:
    """``{model name: {metric: value}}`` plus ``mofi_vs_baseline`` ratios of each metric."""
    files, labels = gpr_files(gpr_dir)
    results: dict = {"benchmark": {"images": len(files), "classes": len(set(labels))}}
    for name, folder in models.items():
        feats = embed_files(folder, files, cfg.batch_size, cfg.device)
        results[name] = retrieval_metrics(feats, labels)
    if "mofi" in results and "baseline" in results:
        results["mofi_vs_baseline"] = {
            k: results["mofi"][k] / results["baseline"][k] if results["baseline"][k] else None
            for k in results["mofi"]}
    return results


def run(cfg: EvaluateConfig, ctx) -> dict:
    """Stage ``evaluate``: GPR1200-protocol retrieval, MOFI vs the baseline CLIP."""
    lay = ctx.layout
    results = evaluate({"mofi": lay.mofi_model, "baseline": lay.baseline_model}, lay.gpr, cfg)
    return results
