"""report: does the demo world show the paper's effects? Label quality against the ground truth
at each curation step, and retrieval of the trained encoder against the CLIP control.

This is the only stage that reads ``data/truth``. On a real corpus there is no truth: the stage
then reports retrieval only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mofi_core.config import ReportConfig
from mofi_core.io import tables
from mofi_core.io.atomic import write_bytes, write_json

Pairs = set[tuple[str, str]]


class PaperDirectionError(RuntimeError):
    """The demo world no longer shows the paper's effects (report.require_paper_direction)."""


def read_truth(truth_dir: Path) -> pa.Table:
    files = sorted(truth_dir.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no ground truth in {truth_dir}; it exists only for the demo "
                                "world (corpus.source: demo)")
    return pa.concat_tables(tables.read_table(f, tables.TRUTH) for f in files)


def precision_recall(predicted: Pairs, truth: Pairs) -> dict[str, float]:
    hits = len(predicted & truth)
    return {"precision": hits / len(predicted) if predicted else 0.0,
            "recall": hits / len(truth) if truth else 0.0, "pairs": len(predicted)}


def label_quality(truth: pa.Table, kept_keys: set[str], mentions: pa.Table, labels: pa.Table
                  ) -> dict[str, dict[str, float]]:
    """(key, entity) pairs: raw NER/linking candidates and the filtered I2E labels vs truth.

    Only keys that survived ingest count, so rejected samples don't bias recall."""
    true: Pairs = {(k, e) for k, es in zip(truth["key"].to_pylist(),
                                            truth["entity_ids"].to_pylist(), strict=True)
                   if k in kept_keys for e in es}
    raw: Pairs = {(k, e) for k, e in zip(mentions["key"].to_pylist(),
                                          mentions["entity_id"].to_pylist(), strict=True) if e}
    kept: Pairs = {(k, e) for k, es in zip(labels["key"].to_pylist(),
                                            labels["entity_ids"].to_pylist(), strict=True)
                   for e in es}
    return {"raw_ner": precision_recall(raw, true), "filtered": precision_recall(kept, true)}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report_markdown(quality: dict, evaluation: dict) -> str:
    lines = ["# MOFI demo-world report", ""]
    if quality:
        lines += ["## Entity labels vs ground truth ((image, entity) pairs)", "",
                  "| step | pairs | precision | recall |", "|---|---|---|---|"]
        for step, title in (("raw_ner", "NER + linking (all candidates)"),
                            ("filtered", "after CLIP filter + min images (I2E)")):
            q = quality[step]
            lines.append(f"| {title} | {q['pairs']} | {_pct(q['precision'])} | "
                         f"{_pct(q['recall'])} |")
    lines += ["", "## Retrieval on the benchmark (GPR1200 protocol, mAP)", "",
              "| model | all | seen classes | unseen classes | R@1 |", "|---|---|---|---|---|"]
    for name, title in (("mofi", "MOFI encoder"), ("baseline", "CLIP on raw alt-text")):
        m = evaluation.get(name, {})
        if m:
            seen, unseen = (m.get(f"gpr_map_{p}", float("nan")) for p in ("seen", "unseen"))
            lines.append(f"| {title} | {m['gpr_map']:.4f} | {seen:.4f} | {unseen:.4f} | "
                         f"{m['recall_at_1']:.4f} |")
    verdicts = paper_direction(quality, evaluation)
    lines += ["", "## Does the paper's direction hold?", ""]
    lines += [f"- {text}: **{'yes' if ok else 'no'}**" for text, ok in verdicts]
    return "\n".join(lines) + "\n"


def paper_direction(quality: dict, evaluation: dict) -> list[tuple[str, bool]]:
    out = []
    if quality:
        out.append(("filtering raises label precision",
                    quality["filtered"]["precision"] > quality["raw_ner"]["precision"]))
    if evaluation.get("mofi") and evaluation.get("baseline"):
        out.append(("entity supervision beats the alt-text CLIP on retrieval mAP",
                    evaluation["mofi"]["gpr_map"] > evaluation["baseline"]["gpr_map"]))
    return out


def run(cfg: ReportConfig, ctx) -> dict:
    """Stage ``report``: writes ``reports/quality.md`` and returns the flat numbers."""
    lay = ctx.layout
    evaluation = json.loads(lay.metrics("evaluate").read_text(encoding="utf-8"))
    quality = {}
    if lay.truth.is_dir():
        manifest = tables.read_table(lay.ingest / "manifest.parquet", tables.MANIFEST)
        quality = label_quality(read_truth(lay.truth), set(manifest["key"].to_pylist()),
                                pq.read_table(lay.ner / "mentions.parquet"),
                                pq.read_table(lay.i2e / "labels.parquet"))
    markdown = report_markdown(quality, evaluation)
    write_bytes(lay.reports / "quality.md", markdown.encode("utf-8"))
    ctx.artifacts.append(lay.reports / "quality.md")
    verdict = dict(paper_direction(quality, evaluation))
    write_json(lay.reports / "quality.json", {"labels": quality, "paper_direction": verdict})
    failed = [text for text, ok in verdict.items() if not ok]
    if cfg.require_paper_direction and failed:
        raise PaperDirectionError(f"report.require_paper_direction: does not hold: {failed}; "
                             f"see {lay.reports / 'quality.md'}")
    return {"labels": quality, "paper_direction_holds": not failed}
