"""validate: the great-expectations gate between curation and training.

Every boundary that feeds training is checked, each as its own batch and suite:

- ``manifest``: the ingest manifest (one row per kept image);
- ``mentions``: NER output (one row per mention, linked or not);
- ``scores``: CLIP scores (one row per image/candidate entity);
- the I2E dataset: ``images`` (one row per image), ``labels`` (one row per image label),
  ``entities`` (one row per class) and ``distribution`` (one row of derived statistics:
  dataset share of the corpus, largest entity share, imbalance).

Expectations marked ``severity: warning`` are reported (and printed) but do not fail the gate;
any other failure raises :class:`ValidationFailed` listing what failed, after the JSON report and
the Data Docs HTML are written, so the evidence is there to read when the pipeline stops.

Every batch of one gate is validated under one GX run: its name is ``$MOFI_RUN_NAME`` (the
Prefect flow run's or the DVC experiment's name) or else ``validate-<UTC time>``; Data Docs show
it. ``reports/validate.json`` does not record it, so that it stays byte-identical across re-runs
of the same data. The Data Docs are rewritten to read offline
(:mod:`mofi_core.validate.data_docs`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pandas as pd

from mofi_core.config.validate import ValidateConfig
from mofi_core.io import tables
from mofi_core.io.atomic import atomic_dir, write_json
from mofi_core.kb.store import KnowledgeBase
from mofi_core.stages import StageVerdict
from mofi_core.validate.gate import i2e_identity

if TYPE_CHECKING:
    from mofi_core.context import StageContext

SHA256 = r"^[0-9a-f]{64}$"
WARN = {"severity": "warning"}
RUN_NAME_ENV = "MOFI_RUN_NAME"
DOCS_SITE = "mofi"


class ValidationFailed(StageVerdict):
    """Error-level expectations failed: reports/validate.json says which; training refuses."""


@dataclass(frozen=True)
class I2EFrames:
    images: pd.DataFrame  # key, num_labels
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


def distribution(frames: I2EFrames, corpus_size: int) -> pd.DataFrame:
    """One row of statistics the I2E dataset as a whole must satisfy."""
    counts = frames.entities["images"]
    return pd.DataFrame([{
        "corpus_share": len(frames.images) / corpus_size if corpus_size else 0.0,
        "top_entity_share": float(counts.max() / counts.sum()) if len(counts) else 0.0,
        "imbalance": float(counts.max() / counts.median()) if len(counts) else 0.0,
        "classes": len(counts)}])


# --- suites: one list of expectations per batch -------------------------------------------------

def manifest_suite(rows: int):
    import great_expectations as gx

    E = gx.expectations
    return [
        E.ExpectTableColumnsToMatchSet(column_set=["key", "shard", "width", "height", "sha256",
                                                   "text_chars", "duplicate_of"]),
        E.ExpectColumnValuesToNotBeNull(column="key"),
        E.ExpectColumnValuesToBeUnique(column="key"),
        E.ExpectColumnValuesToMatchRegex(column="shard", regex=r"^\d{5}\.tar$"),
        E.ExpectColumnValuesToBeBetween(column="width", min_value=1),
        E.ExpectColumnValuesToBeBetween(column="height", min_value=1),
        E.ExpectColumnValuesToMatchRegex(column="sha256", regex=SHA256),
        E.ExpectColumnValuesToBeBetween(column="text_chars", min_value=1),
        E.ExpectTableRowCountToBeBetween(min_value=1, max_value=rows),
        # exact duplicate images are kept and flagged; many of them means a scraping bug
        E.ExpectColumnValuesToBeNull(column="duplicate_of", mostly=0.9, meta=WARN),
    ]


def mentions_suite(kb_ids: list[str]):
    import great_expectations as gx

    E = gx.expectations
    return [
        E.ExpectColumnValuesToNotBeNull(column="key"),
        E.ExpectColumnValuesToBeInSet(column="in_manifest", value_set=[True]),
        E.ExpectColumnValuesToBeBetween(column="start", min_value=0),
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end", column_B="start"),
        E.ExpectColumnValuesToBeInSet(column="source", value_set=["ner", "kb"]),
        E.ExpectColumnValuesToBeInSet(column="entity_id", value_set=kb_ids),  # nulls: unlinked
        E.ExpectColumnValuesToBeBetween(column="link_score", min_value=0.0, max_value=1.0),
        # most mentions should link; a collapse means the KB and the corpus do not match
        E.ExpectColumnValuesToNotBeNull(column="entity_id", mostly=0.2, meta=WARN),
    ]


def scores_suite(kb_ids: list[str]):
    import great_expectations as gx

    E = gx.expectations
    return [
        E.ExpectColumnValuesToNotBeNull(column="key"),
        E.ExpectColumnValuesToNotBeNull(column="entity_id"),
        E.ExpectColumnValuesToBeInSet(column="in_manifest", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="entity_id", value_set=kb_ids),
        E.ExpectColumnValuesToBeBetween(column="score", min_value=-1.0001, max_value=1.0001),
        E.ExpectCompoundColumnsToBeUnique(column_list=["key", "entity_id"]),
    ]


def i2e_suites(cfg: ValidateConfig, rule: dict, classes: list[str], kb_ids: list[str],
               corpus_size: int) -> dict[str, list]:
    import great_expectations as gx

    E = gx.expectations
    max_images = rule.get("max_images_per_entity") or None
    return {
        "images": [
            E.ExpectTableColumnsToMatchSet(column_set=["key", "num_labels", "in_manifest"]),
            E.ExpectColumnValuesToNotBeNull(column="key"),
            E.ExpectColumnValuesToBeUnique(column="key"),
            E.ExpectColumnValuesToBeInSet(column="in_manifest", value_set=[True]),
            E.ExpectColumnValuesToBeBetween(column="num_labels", min_value=1,
                                            max_value=cfg.max_labels_per_image),
            E.ExpectTableRowCountToBeBetween(
                min_value=max(1, int(cfg.min_fraction_of_corpus * corpus_size)),
                max_value=corpus_size),
        ],
        "labels": [
            E.ExpectColumnValuesToNotBeNull(column="entity_id"),
            E.ExpectColumnValuesToBeInSet(column="entity_id", value_set=classes),
            E.ExpectColumnValuesToBeInSet(column="entity_id", value_set=kb_ids),
            E.ExpectColumnValuesToBeBetween(column="score", min_value=rule["score_floor"],
                                            max_value=1.0001),
            E.ExpectCompoundColumnsToBeUnique(column_list=["key", "entity_id"]),
        ],
        "entities": [
            E.ExpectColumnValuesToBeBetween(column="images",
                                            min_value=rule["min_images_per_entity"],
                                            max_value=max_images),
            E.ExpectColumnValuesToBeUnique(column="entity_id"),
            E.ExpectTableRowCountToEqual(value=len(classes)),
        ],
        "distribution": [
            E.ExpectColumnValuesToBeBetween(column="corpus_share",
                                            min_value=cfg.min_fraction_of_corpus,
                                            max_value=1.0),
            E.ExpectColumnValuesToBeBetween(column="classes", min_value=2),
            # a single entity holding most of the data is suspicious, not necessarily wrong
            E.ExpectColumnValuesToBeBetween(column="top_entity_share",
                                            max_value=cfg.max_entity_share, meta=WARN),
            E.ExpectColumnValuesToBeBetween(column="imbalance", max_value=cfg.max_imbalance,
                                            meta=WARN),
        ],
    }


# --- running them --------------------------------------------------------------------------------

def _context(docs_dir: Path | None):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                         metric_calculations=False)
    for name in list(context.variables.data_docs_sites or {}):
        context.delete_data_docs_site(name)
    if docs_dir is not None:
        context.add_data_docs_site(site_name=DOCS_SITE, site_config={
            "class_name": "SiteBuilder", "show_how_to_buttons": False,
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir)}})
    return context


def run_name(now: datetime | None = None, given: str | None = None) -> str:
    """The GX run name of this validation: ``given`` or else ``$MOFI_RUN_NAME`` (the pipeline
    run) or ``$DVC_EXP_NAME`` (the DVC experiment), made safe as a folder name (GX stores
    results under it); else ``validate-<UTC time>``."""
    if given is None:
        given = os.environ.get(RUN_NAME_ENV) or os.environ.get("DVC_EXP_NAME", "")
    safe = re.sub(r"[^\w.-]+", "-", given).strip("-.")[:120]
    if safe and safe != "__none__":
        return safe
    return f"validate-{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}"


def _unknown_columns(kwargs: dict, frame: pd.DataFrame) -> list[str]:
    """The columns an expectation names that the frame does not have under exactly that name
    (GX's pandas backend resolves ``column="KEY"`` to a column ``key``; a gate must not)."""
    named = [kwargs[k] for k in ("column", "column_A", "column_B") if kwargs.get(k) is not None]
    named += list(kwargs.get("column_list") or [])
    have = {str(c) for c in frame.columns}
    return [str(c) for c in named if str(c) not in have]


def run_suites(batches: dict[str, tuple[pd.DataFrame, list]], docs_dir: Path | None = None,
               run: str | None = None) -> list[dict]:
    """Validate each ``name -> (frame, expectations)`` as one GX run named ``run`` (default:
    :func:`run_name`); with ``docs_dir``, build Data Docs there, readable offline. Returns one
    JSON-able row per expectation."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    now = datetime.now(UTC)
    run_id = RunIdentifier(run_name=run_name(now, run), run_time=now)
    context = _context(docs_dir)
    source = context.data_sources.add_pandas("mofi")
    results = []
    for name, (frame, expectations) in batches.items():
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{name}", data=batch_def, suite=suite))
        outcome = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY",
                                 run_id=run_id)
        for r in outcome.results:
            cfg = r.expectation_config
            kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "value_set")}
            exception = (r.exception_info or {}).get("exception_message") \
                if r.exception_info and r.exception_info.get("raised_exception") else None
            unknown = _unknown_columns(cfg.kwargs, frame)
            if unknown:
                exception = (f"batch {name!r} has no column {', '.join(map(repr, unknown))} "
                             f"(it has {sorted(map(str, frame.columns))}); the gate matches "
                             "column names exactly, where Great Expectations ignores case")
            results.append({"batch": name, "expectation": cfg.type, "kwargs": kwargs,
                            "success": bool(r.success) and not unknown,
                            "severity": (cfg.meta or {}).get("severity", "error"),
                            "unexpected_count": r.result.get("unexpected_count"),
                            "examples": _jsonable(r.result.get("partial_unexpected_list",
                                                               [])[:5]),
                            "observed": _jsonable(r.result.get("observed_value")),
                            "exception": exception})
    if docs_dir is not None:
        from mofi_core.validate.data_docs import make_offline

        context.build_data_docs(site_names=[DOCS_SITE])
        make_offline(docs_dir, _docs_rows(context, docs_dir, list(batches), results, run_id))
    return results


def _docs_rows(context, docs_dir: Path, names: list[str], results: list[dict], run_id):
    """What the offline index lists: one row per batch, with its pages as GX placed them."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
    )

    from mofi_core.validate.data_docs import ResultRow

    root = docs_dir.resolve()

    def page(identifier) -> str | None:
        for site in context.get_docs_sites_urls(resource_identifier=identifier,
                                                site_name=DOCS_SITE):
            path = Path(url2pathname(urlsplit(site.get("site_url") or "").path)).resolve()
            if path.is_file() and path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return None

    keys = {k.expectation_suite_identifier.name: k
            for k in context.validation_results_store.list_keys()
            if k.run_id.run_name == run_id.run_name}
    rows = []
    for name in names:
        mine = [r for r in results if r["batch"] == name]
        failed = sum(not r["success"] and r["severity"] == "error" for r in mine)
        warned = sum(not r["success"] and r["severity"] == "warning" for r in mine)
        rows.append(ResultRow(
            suite=name, asset=name, status="failed" if failed else "warnings" if warned
            else "passed", run_name=run_id.run_name,
            run_time=f"{run_id.run_time:%Y-%m-%d %H:%M:%S}", expectations=len(mine),
            failed=failed, warnings=warned,
            page=page(keys[name]) if name in keys else None,
            suite_page=page(ExpectationSuiteIdentifier(name=name))))
    return rows


def _jsonable(value):
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return str(value)


@dataclass(frozen=True)
class Inputs:
    """The files the gate reads. ``mentions``/``scores`` may be None (those batches skipped)."""
    i2e: Path
    kb: Path
    manifest: Path
    mentions: Path | None = None
    scores: Path | None = None


def known_ids(kb_dir: Path, columns: list[pd.Series]) -> list[str]:
    """The ids the batches name that the KB holds: the expectations' value set. (The KB's
    every id would make a suite, and its Data Docs, as large as the KB; an id a batch names
    outside this set is exactly one the KB lacks.)"""
    kb = KnowledgeBase.read(kb_dir)
    used = {e for col in columns for e in col.dropna().unique().tolist()}
    return sorted(e for e in used if e in kb)


def build_batches(inputs: Inputs, cfg: ValidateConfig) -> dict[str, tuple[pd.DataFrame, list]]:
    stats = json.loads((inputs.i2e / "stats.json").read_text(encoding="utf-8"))
    classes = json.loads((inputs.i2e / "vocab.json").read_text(encoding="utf-8"))["classes"]
    manifest = tables.read_table(inputs.manifest, tables.MANIFEST).to_pandas()
    manifest["text_chars"] = manifest.pop("text").str.len()
    keys = pd.Index(manifest["key"].unique())
    corpus_size = len(manifest)
    frames = load_frames(inputs.i2e)
    frames.images["in_manifest"] = frames.images["key"].isin(keys)
    mentions = scores = None
    if inputs.mentions is not None:
        mentions = tables.read_table(inputs.mentions, tables.MENTIONS).to_pandas()
        mentions = mentions.drop(columns=["mention", "label"])
        mentions["in_manifest"] = mentions["key"].isin(keys)
    if inputs.scores is not None:
        scores = tables.read_table(inputs.scores, tables.SCORES).to_pandas()
        scores["in_manifest"] = scores["key"].isin(keys)
    kb_ids = known_ids(inputs.kb, [f["entity_id"] for f in (mentions, scores, frames.labels)
                                   if f is not None])
    batches: dict[str, tuple[pd.DataFrame, list]] = {
        "manifest": (manifest, manifest_suite(corpus_size))}
    if mentions is not None:
        batches["mentions"] = (mentions, mentions_suite(kb_ids))
    if scores is not None:
        batches["scores"] = (scores, scores_suite(kb_ids))
    suites = i2e_suites(cfg, stats["rule"], classes, kb_ids, corpus_size)
    for name in ("images", "labels", "entities"):
        batches[name] = (getattr(frames, name), suites[name])
    batches["distribution"] = (distribution(frames, corpus_size), suites["distribution"])
    return batches


def _line(r: dict) -> str:
    extra = f", examples: {r['examples']}" if r.get("examples") else ""
    extra += f", error: {r['exception']}" if r.get("exception") else ""
    return (f"  - [{r['batch']}] {r['expectation']} {r['kwargs']} "
            f"(unexpected: {r['unexpected_count']}, observed: {r['observed']}{extra})")


def validate(inputs: Inputs, report_file: Path, cfg: ValidateConfig,
             docs_dir: Path | None = None) -> dict:
    """Run every suite; write ``report_file`` (and Data Docs into ``docs_dir``); raise
    :class:`ValidationFailed` if any error-severity expectation failed."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    batches = build_batches(inputs, cfg)
    if docs_dir is not None:
        with atomic_dir(docs_dir) as tmp:
            results = run_suites(batches, tmp)
    else:
        results = run_suites(batches)
    failed = [r for r in results if not r["success"] and r["severity"] == "error"]
    warned = [r for r in results if not r["success"] and r["severity"] == "warning"]
    per_batch = {name: sum(r["batch"] == name for r in results) for name in batches}
    summary = {"expectations": len(results), "failed": len(failed), "warnings": len(warned),
               "success": not failed, "per_batch": per_batch,
               "i2e_expectations": sum(per_batch[b] for b in
                                       ("images", "labels", "entities", "distribution")),
               "rows": {name: len(frame) for name, (frame, _) in batches.items()}}
    write_json(report_file, {"summary": summary, "checked": i2e_identity(inputs.i2e),
                             "results": results})
    for r in warned:
        print("validate: WARNING (does not stop the pipeline):\n" + _line(r))
    if failed:
        docs = f"; Data Docs: {docs_dir / 'index.html'}" if docs_dir is not None else ""
        raise ValidationFailed(
            f"data validation failed: {len(failed)} of {len(results)} expectations "
            f"(report: {report_file}{docs}):\n" + "\n".join(_line(r) for r in failed)
            + ("\nwarnings (not blocking):\n" + "\n".join(_line(r) for r in warned)
               if warned else ""), _numbers(summary))
    return summary


def _numbers(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if isinstance(v, int | float)}


def run(cfg: ValidateConfig, ctx: StageContext) -> dict:
    """Stage ``validate``: the gate; raises :class:`ValidationFailed` to stop the pipeline."""
    lay = ctx.layout
    report = lay.reports / "validate.json"
    docs = lay.reports / "data_docs" if cfg.data_docs else None
    ctx.artifacts.append(report)
    if docs is not None:
        ctx.artifacts.append(docs)
    inputs = Inputs(i2e=lay.i2e, kb=lay.kb, manifest=lay.ingest / "manifest.parquet",
                    mentions=lay.ner / "mentions.parquet", scores=lay.score / "scores.parquet")
    if docs is None:
        _docs_off(lay.reports / "data_docs")
    return _numbers(validate(inputs, report, cfg, docs))


def _docs_off(folder: Path) -> None:
    """With Data Docs off, ``reports/data_docs`` says so: no earlier run's pages are left there
    to mislead."""
    from mofi_core.io.atomic import atomic_dir

    with atomic_dir(folder) as tmp:
        (tmp / "index.html").write_text(
            "<!doctype html><title>Data Docs off</title><p>Data Docs are off "
            "(<code>runtime.validate.data_docs: false</code>); the results are in "
            "<code>reports/validate.json</code>.</p>\n", encoding="utf-8")
