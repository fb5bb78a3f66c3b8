"""The label rules: which (image, entity) candidates become labels. Pure functions, no I/O
besides reading the null-score table.

``build`` applies them shard by shard to materialise the I2E dataset; ``report`` re-applies
each rule alone to show what it buys. Both import them from here, so the two never disagree.

``top_k`` ranks an image's candidates by the CLIP score plus ``build.link_weight`` times the log
of the candidate's link score (:mod:`mofi_core.curate.linking`, from ``ner``): namesakes that
CLIP cannot tell apart are ordered by the text evidence, while the threshold rules keep reading
the CLIP score alone. With ``link_weight`` 0 the ranking is the CLIP score's.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mofi_core.config.build import BuildConfig
from mofi_core.io import tables

Labels = dict[str, list[tuple[str, float]]]  # image key -> [(entity id, score)]
Links = dict[tuple[str, str], float]  # (image key, entity id) -> its best link score
LINK_FLOOR = 1e-6  # log of a link score below this counts as log(LINK_FLOOR)


class LinkScoresError(ValueError):
    """build.link_weight needs the link scores of ner and they are missing or incomplete."""


def rank_value(score: float, link: float, weight: float) -> float:
    """What ``top_k`` orders by: the CLIP score plus ``weight * log(link score)``."""
    if not weight:
        return score
    return score + weight * math.log(max(link, LINK_FLOOR))


def top_k(cands: list[tuple[str, float]], k: int,
          rank: list[float] | None = None) -> list[tuple[str, float]]:
    """The ``k`` best candidates by ``rank`` (default: their scores), and every candidate tied
    with the k-th: a tie (two namesakes with one text) is never settled by the order of their
    ids."""
    values = [sc for _, sc in cands] if rank is None else rank
    order = sorted(range(len(cands)), key=lambda i: (-values[i], cands[i][0]))
    if len(order) > k:
        cut = values[order[k - 1]]
        order = [i for i in order if values[i] >= cut]
    return [cands[i] for i in order]


def link_scores(mention_files: list[Path]) -> Links:
    """(key, entity) -> the best ``link_score`` of the entity among the key's mentions, from
    ``ner``'s mention tables (a whole ``mentions.parquet`` or one shard's part)."""
    import pyarrow.compute as pc

    out: Links = {}
    for path in mention_files:
        if not path.is_file():
            raise LinkScoresError(
                f"build.link_weight > 0 ranks candidates by their link scores, and {path} is "
                "missing: run ner (dvc repro ner), or set build.link_weight: 0")
        t = tables.read_table(path, tables.MENTIONS).select(["key", "entity_id", "link_score"])
        t = t.filter(pc.is_valid(t["entity_id"]))
        for k, e, sc in zip(t["key"].to_pylist(), t["entity_id"].to_pylist(),
                            t["link_score"].to_pylist(), strict=True):
            if sc > out.get((k, e), -1.0):
                out[(k, e)] = sc
    return out


def shard_links(ner_dir: Path | None, score_part: Path, keys: list[str],
                entities: list[str]) -> list[float]:
    """The link scores of one score part's pairs (aligned with ``keys``), from ner's mention
    table of the same shard (``<ner_dir>/parts/<name>.parquet``)."""
    if ner_dir is None:
        raise LinkScoresError("build.link_weight > 0 needs ner's link scores: give the ner "
                              "folder, or set build.link_weight: 0")
    part = ner_dir / "parts" / f"{score_part.name.split('.', 1)[0]}.parquet"
    return link_values(keys, entities, link_scores([part]))


def link_values(keys: list[str], entities: list[str], links: Links) -> list[float]:
    """Each scored pair's link score, aligned with ``keys``. A scored pair that ner never
    linked is an error: score and ner are out of sync."""
    out = []
    for k, e in zip(keys, entities, strict=True):
        if (k, e) not in links:
            raise LinkScoresError(
                f"image {k!r} has a score for {e!r} but no ner mention links it: score and ner "
                "outputs are out of sync; re-run score (dvc repro score)")
        out.append(links[(k, e)])
    return out


def passes_rules(keys: list[str], entities: list[str], scores: list[float], cfg: BuildConfig,
                  null_cut: dict[str, float], links: list[float] | None = None) -> Labels:
    """The per-image rules; ``links`` (aligned with ``keys``) when ``build.link_weight`` > 0."""
    if "fdr" in cfg.rules:
        raise ValueError("build.rules fdr must be resolved to a threshold first (build does it "
                         "from the decoy estimate, mofi_core.curate.fdr)")
    if cfg.link_weight and links is None:
        raise LinkScoresError("build.link_weight > 0 needs each pair's link score: pass them "
                              "(rules.link_values), or set build.link_weight: 0")
    by_key: Labels = defaultdict(list)
    rank_by_key: dict[str, list[float]] = defaultdict(list)
    for i, (key, ent, sc) in enumerate(zip(keys, entities, scores, strict=True)):
        by_key[key].append((ent, sc))
        rank_by_key[key].append(rank_value(sc, links[i], cfg.link_weight) if links else sc)
    kept: Labels = {}
    for key, cands in by_key.items():
        if "top_k" in cfg.rules:
            cands = top_k(cands, cfg.top_k, rank_by_key[key])
        if "threshold" in cfg.rules:
            cands = [c for c in cands if c[1] >= cfg.threshold]
        if "null_quantile" in cfg.rules:
            if key not in null_cut:
                raise ValueError(f"build.rules has null_quantile but image {key!r} has no null "
                                 "scores: set score.null_samples > 0 and re-run score")
            cands = [c for c in cands if c[1] > null_cut[key]]
        if cands:
            kept[key] = cands
    return kept


def select_labels(keys: list[str], entities: list[str], scores: list[float], cfg: BuildConfig,
                  null_cut: dict[str, float] | None = None,
                  links: list[float] | None = None) -> Labels:
    """key -> sorted [(entity, score)] after the rules and the vocabulary cut; pure, no I/O."""
    kept = passes_rules(keys, entities, scores, cfg, null_cut or {}, links)
    if cfg.max_images_per_entity:
        per_entity: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for key, labels in kept.items():
            for e, s in labels:
                per_entity[e].append((s, key))
        allowed = {(e, k) for e, items in per_entity.items()
                   for _, k in sorted(items, key=lambda t: (-t[0], t[1]))
                   [: cfg.max_images_per_entity]}
        kept = {k: [(e, s) for e, s in ls if (e, k) in allowed] for k, ls in kept.items()}
    counts = Counter(e for labels in kept.values() for e, _ in labels)
    vocab = {e for e, n in counts.items() if n >= cfg.min_images_per_entity}
    out = {}
    for key, labels in kept.items():
        labels = sorted((e, s) for e, s in labels if e in vocab)
        if labels:
            out[key] = labels
    return out


def null_cutoffs(null_file: Path, q: float) -> dict[str, float]:
    table = tables.read_table(null_file, tables.NULL_SCORES)
    return {k: float(np.quantile(s, q)) for k, s in
            zip(table["key"].to_pylist(), table["scores"].to_pylist(), strict=True) if s}


def rule_summary(cfg: BuildConfig) -> dict:
    """What build applied; ``score_floor`` is the lowest score a kept label can have."""
    return {**cfg.model_dump(mode="json"),
            "score_floor": cfg.threshold if "threshold" in cfg.rules else -1.0}
