"""The label rules: which (image, entity) candidates become labels. Pure functions, no I/O
besides reading the null-score table.

``build`` applies them shard by shard to materialise the I2E dataset; ``report`` re-applies
each rule alone to show what it buys. Both import them from here, so the two never disagree.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mofi_core.config.build import BuildConfig
from mofi_core.io import tables

Labels = dict[str, list[tuple[str, float]]]  # image key -> [(entity id, score)]


def top_k(cands: list[tuple[str, float]], k: int) -> list[tuple[str, float]]:
    """The ``k`` best-scoring candidates, and every candidate tied with the k-th: a tie (two
    namesakes with one text) is never settled by the order of their ids."""
    ranked = sorted(cands, key=lambda c: (-c[1], c[0]))
    if len(ranked) <= k:
        return ranked
    return [c for c in ranked if c[1] >= ranked[k - 1][1]]


def passes_rules(keys: list[str], entities: list[str], scores: list[float], cfg: BuildConfig,
                  null_cut: dict[str, float]) -> Labels:
    if "fdr" in cfg.rules:
        raise ValueError("build.rules fdr must be resolved to a threshold first (build does it "
                         "from the decoy estimate, mofi_core.curate.fdr)")
    by_key: Labels = defaultdict(list)
    for key, ent, sc in zip(keys, entities, scores, strict=True):
        by_key[key].append((ent, sc))
    kept: Labels = {}
    for key, cands in by_key.items():
        if "top_k" in cfg.rules:
            cands = top_k(cands, cfg.top_k)
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
                  null_cut: dict[str, float] | None = None) -> Labels:
    """key -> sorted [(entity, score)] after the rules and the vocabulary cut; pure, no I/O."""
    kept = passes_rules(keys, entities, scores, cfg, null_cut or {})
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
