"""validate: the great-expectations gate between curation and training.

Two batches are checked: the I2E images (one row per image) and the I2E vocabulary (one row per
entity). Expectations marked ``severity: warning`` are reported but do not fail the gate; any
other failure raises :class:`ValidationFailed` listing what failed, after the report is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mofi_core.config import ValidateConfig
from mofi_core.io import tables
from mofi_core.io.atomic import write_json
from mofi_core.kb import KnowledgeBase


class ValidationFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class I2EFrames:
    images: pd.DataFrame  # key, num_labels, first_entity, min_score, max_score
    labels: pd.DataFrame  # key, entity_id, score
    entities: pd.DataFrame  # entity_id, images


def load_frames(i2e_dir: Path) -> I2EFrames:
    table = tables.read_table(i2e_dir / "labels.parquet", tables.LABELS).to_pandas()
    uneven = table["key"][table["entity_ids"].map(len) != table["scores"].map(len)].tolist()
    if uneven:
        raise ValidationFailed(f"{i2e_dir / 'labels.parquet'}: {len(uneven)} rows have a "
                               f"different number of entity_ids and scores (keys {uneven[:5]})")
    labels = table[["key", "entity_ids", "scores"]].explode(["entity_ids", "scores"])
    labels = labels.rename(columns={"entity_ids": "entity_id", "scores": "score"})
    labels["score"] = labels["score"].astype(float)
    images = pd.DataFrame({"key": table["key"], "num_labels": table["entity_ids"].map(len)})
    entities = labels.groupby("entity_id").size().rename("images").reset_index()
    return I2EFrames(images=images, labels=labels.reset_index(drop=True), entities=entities)


def _suites(cfg: ValidateConfig, rule: dict, classes: list[str], kb_ids: list[str],
            corpus_size: int):
    import great_expectations as gx

    E = gx.expectations
    warn = {"severity": "warning"}
    images = [
        E.ExpectTableColumnsToMatchSet(column_set=["key", "num_labels"]),
        E.ExpectColumnValuesToNotBeNull(column="key"),
        E.ExpectColumnValuesToBeUnique(column="key"),
        E.ExpectColumnValuesToBeBetween(column="num_labels", min_value=1,
                                        max_value=cfg.max_labels_per_image),
        E.ExpectTableRowCountToBeBetween(
            min_value=max(1, int(cfg.min_fraction_of_corpus * corpus_size)),
            max_value=corpus_size),
    ]
    labels = [
        E.ExpectColumnValuesToNotBeNull(column="entity_id"),
        E.ExpectColumnValuesToBeInSet(column="entity_id", value_set=classes),
        E.ExpectColumnValuesToBeInSet(column="entity_id", value_set=kb_ids),
        E.ExpectColumnValuesToBeBetween(column="score", min_value=rule["score_floor"],
                                        max_value=1.0),
        E.ExpectCompoundColumnsToBeUnique(column_list=["key", "entity_id"]),
    ]
    entities = [
        E.ExpectColumnValuesToBeBetween(column="images", min_value=rule["min_images_per_entity"]),
        E.ExpectColumnValuesToBeUnique(column="entity_id"),
        E.ExpectTableRowCountToEqual(value=len(classes)),
        # a single entity holding most of the data is suspicious, not necessarily wrong
        E.ExpectColumnMaxToBeBetween(column="images", max_value=max(
            rule["min_images_per_entity"], int(0.5 * corpus_size)), meta=warn),
    ]
    return {"images": images, "labels": labels, "entities": entities}


def run_suites(frames: I2EFrames, suites: dict) -> list[dict]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                         metric_calculations=False)
    source = context.data_sources.add_pandas("i2e")
    results = []
    for name, expectations in suites.items():
        batch = (source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
                 .get_batch(batch_parameters={"dataframe": getattr(frames, name)}))
        suite = gx.ExpectationSuite(name=f"i2e_{name}", expectations=expectations)
        for r in batch.validate(suite).results:
            cfg = r.expectation_config
            kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "value_set")}
            results.append({"batch": name, "expectation": cfg.type, "kwargs": kwargs,
                            "success": bool(r.success),
                            "severity": (cfg.meta or {}).get("severity", "error"),
                            "unexpected_count": r.result.get("unexpected_count"),
                            "observed": _jsonable(r.result.get("observed_value"))})
    return results


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def validate(i2e_dir: Path, kb_path: Path, manifest: Path, report_file: Path,
             cfg: ValidateConfig) -> dict:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    stats = json.loads((i2e_dir / "stats.json").read_text(encoding="utf-8"))
    classes = json.loads((i2e_dir / "vocab.json").read_text(encoding="utf-8"))["classes"]
    kb_ids = sorted(KnowledgeBase.load(kb_path).entities)
    corpus_size = tables.read_table(manifest, tables.MANIFEST).num_rows
    results = run_suites(load_frames(i2e_dir),
                         _suites(cfg, stats["rule"], classes, kb_ids, corpus_size))
    failed = [r for r in results if not r["success"] and r["severity"] == "error"]
    warned = [r for r in results if not r["success"] and r["severity"] == "warning"]
    summary = {"expectations": len(results), "failed": len(failed), "warnings": len(warned),
               "success": not failed}
    write_json(report_file, {"summary": summary, "results": results})
    if failed:
        lines = [f"  - [{r['batch']}] {r['expectation']} {r['kwargs']} "
                 f"(unexpected: {r['unexpected_count']}, observed: {r['observed']})"
                 for r in failed]
        raise ValidationFailed(f"I2E validation failed ({len(failed)} of {len(results)} "
                               f"expectations; report: {report_file}):\n" + "\n".join(lines))
    return summary


def run(cfg: ValidateConfig, ctx) -> dict:
    """Stage ``validate``: the gate; raises :class:`ValidationFailed` to stop the pipeline."""
    lay = ctx.layout
    report = lay.reports / "validate.json"
    ctx.artifacts.append(report)
    return validate(lay.i2e, lay.kb, lay.ingest / "manifest.parquet", report, cfg)
