"""kb: the knowledge base every later stage links to, from the source ``params.yaml`` names.

``kb.source``:

- ``demo``: the demo world's KB, written by the ``corpus`` stage (``data/corpus/kb.parquet``);
- ``parquet``: your file (parquet with the columns of ``tables.KB``, or the same rows as JSON
  Lines);
- ``wikidata``: a Wikidata JSON dump, streamed through :mod:`mofi_core.kb.wikidata` (bz2/gz read
  as they come, memory flat).

The schema is checked here, once, with errors naming the file, the column and the problem;
the result is ``data/kb/``: ``kb.parquet`` in the project's own schema, and what every later
process opens without rebuilding or copying it (:mod:`mofi_core.kb.store`): the rows sorted by
id in a memory-mapped Arrow file, the id and surface-form hash indexes, and the gazetteer's
phrase index, tokenized by ``ner.spacy_model``'s tokenizer (:mod:`mofi_core.kb.phrases`; the
stage tracks that key too). ``kb.path`` is the stage's DVC dependency (``${kb.path}`` in
dvc.yaml), so DVC re-runs the stage when the file changes and caches the import of a large dump
like any other output.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc

from mofi_core.config.kb import KBConfig
from mofi_core.context import StageContext
from mofi_core.io import tables
from mofi_core.kb.store import KnowledgeBase

TYPES_SHOWN = 8  # entity types listed in the metrics (the most common)


def check(cfg: KBConfig, ctx: StageContext) -> None:
    """Before any work: the source file exists (a demo KB is made by the corpus stage)."""
    src = ctx.layout.under_root(cfg.path)
    if src.is_file():
        return
    if cfg.source == "demo":
        raise FileNotFoundError(f"kb.source demo reads {src}, which the corpus stage writes: "
                                "run it first (dvc repro corpus), or set kb.source to parquet "
                                "or wikidata with kb.path")
    what = "KB file" if cfg.source == "parquet" else "Wikidata dump"
    raise FileNotFoundError(f"kb.path: the {what} {src} does not exist; check the path "
                            "(relative paths start at the project root)")


def _wikidata(src: Path, out: Path, cfg: KBConfig) -> dict:
    from mofi_core.kb.wikidata import import_wikidata

    stats = import_wikidata(src, out, dict(cfg.type_map) or None, cfg.language,
                            cfg.min_sitelinks)
    if stats.kept == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in stats.skipped.most_common()) or "none read"
        raise ValueError(f"kb.path: the Wikidata dump {src} gave no entity ({stats.lines} lines; "
                         f"skipped {reasons}): check kb.language, kb.min_sitelinks and "
                         "kb.type_map")
    return {"dump_lines": stats.lines,
            **{f"skipped.{k.replace(' ', '_')}": v for k, v in stats.skipped.items()}}


def materialise(cfg: KBConfig, src: Path, out_dir: Path, spacy_model: str | None = None
                ) -> dict:
    """Write the KB folder ``out_dir`` from the source (``spacy_model``: the tokenizer of the
    gazetteer's phrases; None writes no phrase index); returns the stage's metrics."""
    from mofi_core.io.hashing import file_sha256
    from mofi_core.kb.phrases import build_phrases, load_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / "kb.parquet"
    more: dict = {}
    if cfg.source == "wikidata":
        more = _wikidata(src, table_path, cfg)
        kb = KnowledgeBase.load(table_path)  # the importer's output goes through the same checks
    else:
        kb = KnowledgeBase.load(src)  # missing columns, wrong types, empty ids, duplicates
        tables.write_table(table_path, kb.table, tables.KB)
    phrases = build_phrases(kb.table, load_tokenizer(spacy_model)) if spacy_model else None
    meta = kb.write(out_dir, f"sha256:{file_sha256(table_path)}", phrases)
    # MLflow metric names take letters, digits and _-. /: a user's type names may hold more
    counts = pc.value_counts(kb.table["type"]).to_pylist()
    types = Counter()
    for c in counts:
        types[re.sub(r"[^\w\-. /]", "_", c["values"] or "") or "untyped"] += c["counts"]
    described = int(pc.sum(pc.greater(pc.utf8_length(kb.table["description"]), 0)).as_py() or 0)
    return {"entities": len(kb), "surface_forms": meta["surface_forms"],
            "phrases": meta["phrases"], "with_description": described,
            "with_popularity": int(pc.sum(pc.greater(kb.table["popularity"], 0)).as_py() or 0),
            **{f"type.{t}": n for t, n in types.most_common(TYPES_SHOWN)}, **more}


def run(cfg: KBConfig, ctx: StageContext) -> dict:
    """Stage ``kb``: ``kb.path`` (per ``kb.source``) -> ``data/kb/`` (the table and its
    indexes)."""
    from mofi_core.io.atomic import atomic_dir

    lay = ctx.layout
    src = lay.under_root(cfg.path)
    with atomic_dir(lay.kb) as out:
        metrics = materialise(cfg, src, out, ctx.params.ner.spacy_model)
        (out / "source.json").write_text(json.dumps(
            {"source": cfg.source, "path": cfg.path}, indent=1) + "\n", encoding="utf-8")
    print(f"kb: {metrics['entities']} entities from {cfg.source} {cfg.path}")
    return metrics
