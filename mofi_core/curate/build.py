"""build: apply the filter rules to the scores and materialise the Image-to-Entities dataset.

Rules (``build.rules``, combined with AND): ``threshold`` (score >= build.threshold), ``top_k``
(among the image's k best candidates), ``null_quantile`` (score above the q-quantile of the
image's scores against random non-candidate entities, from ``score``). Then entities with fewer
than ``min_images_per_entity`` images are dropped (optionally capped at ``max_images_per_entity``,
keeping the best scores) and images left without a label are dropped.

Writes I2E shards (``key.jpg`` + ``key.txt`` alt-text + ``key.json`` with ``entity_ids`` and
``scores``), ``labels.parquet``, ``vocab.json`` (class index = position in ``classes``),
``stats.json`` and plots. Only this stage reads the rule params, so changing them re-runs only
``build`` and what follows it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mofi_core.config import BuildConfig
from mofi_core.io import tables
from mofi_core.io.atomic import atomic_dir, write_json
from mofi_core.io.shards import ShardWriter, iter_samples, list_shards, shard_name

Labels = dict[str, list[tuple[str, float]]]


class EmptyDatasetError(RuntimeError):
    pass


def _passes_rules(keys: list[str], entities: list[str], scores: list[float], cfg: BuildConfig,
                  null_cut: dict[str, float]) -> Labels:
    by_key: Labels = defaultdict(list)
    for key, ent, sc in zip(keys, entities, scores, strict=True):
        by_key[key].append((ent, sc))
    kept: Labels = {}
    for key, cands in by_key.items():
        if "top_k" in cfg.rules:
            cands = sorted(cands, key=lambda c: (-c[1], c[0]))[: cfg.top_k]
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
    kept = _passes_rules(keys, entities, scores, cfg, null_cut or {})
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


def build(ingest_dir: Path, score_dir: Path, out_dir: Path, cfg: BuildConfig) -> dict:
    scores = tables.read_table(score_dir / "scores.parquet", tables.SCORES)
    cut = null_cutoffs(score_dir / "null.parquet", cfg.null_quantile) \
        if "null_quantile" in cfg.rules else None
    labels = select_labels(scores["key"].to_pylist(), scores["entity_id"].to_pylist(),
                           scores["score"].to_pylist(), cfg, cut)
    if not labels:
        raise EmptyDatasetError(
            f"no (image, entity) pair passed build.rules={list(cfg.rules)} "
            f"(threshold={cfg.threshold}, top_k={cfg.top_k}, null_quantile={cfg.null_quantile}) "
            f"and build.min_images_per_entity={cfg.min_images_per_entity}: relax them or check "
            f"the score distribution in {score_dir}")
    classes = sorted({e for ls in labels.values() for e, _ in ls})
    with atomic_dir(out_dir) as out:
        rows = _write_shards(ingest_dir, labels, out, cfg.samples_per_shard)
        tables.write_table(out / "labels.parquet", tables.from_rows(rows, tables.LABELS),
                           tables.LABELS)
        write_json(out / "vocab.json", {"classes": classes})
        stats = dataset_stats(rows, classes, scores.num_rows)
        # the rule travels with the data so that validate checks what build actually applied
        write_json(out / "stats.json", {**stats, "rule": rule_summary(cfg)})
        _plots(out, rows, scores, labels)
    return stats


def rule_summary(cfg: BuildConfig) -> dict:
    """What build applied; ``score_floor`` is the lowest score a kept label can have."""
    return {**cfg.model_dump(mode="json", exclude={"samples_per_shard"}),
            "score_floor": cfg.threshold if "threshold" in cfg.rules else -1.0}


def _write_shards(ingest_dir: Path, labels: Labels, out: Path, per_shard: int) -> list[dict]:
    rows: list[dict] = []
    (out / "shards").mkdir()
    writer = None
    try:
        for shard in list_shards(ingest_dir / "shards"):
            for s in iter_samples(shard):
                key = s["__key__"]
                if key not in labels:
                    continue
                if writer is None or writer.count >= per_shard:
                    if writer is not None:
                        writer.close()
                    writer = ShardWriter(out / "shards" / shard_name(len(rows) // per_shard))
                ents = [e for e, _ in labels[key]]
                scs = [round(float(sc), 6) for _, sc in labels[key]]
                writer.write(key, {"jpg": s["jpg"], "txt": s.get("txt", b""),
                                   "json": {"entity_ids": ents, "scores": scs}})
                rows.append({"key": key, "shard": writer.path.name, "entity_ids": ents,
                             "scores": scs})
    finally:
        if writer is not None:
            writer.close()
    return rows


def dataset_stats(rows: list[dict], classes: list[str], pairs_in: int) -> dict:
    per_entity = Counter(e for r in rows for e in r["entity_ids"])
    labels = sum(len(r["entity_ids"]) for r in rows)
    return {"images": len(rows), "entities": len(classes), "labels": labels,
            "pairs_scored": pairs_in, "labels_per_image": labels / len(rows),
            "min_images_per_entity": min(per_entity.values()),
            "max_images_per_entity": max(per_entity.values())}


def _plots(out: Path, rows: list[dict], scores, labels: Labels) -> None:
    """Entity frequency histogram and score histograms, kept vs dropped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = {(k, e) for k, ls in labels.items() for e, _ in ls}
    all_scores = np.asarray(scores["score"].to_pylist(), dtype=float)
    mask = np.array([(k, e) in kept for k, e in zip(scores["key"].to_pylist(),
                                                    scores["entity_id"].to_pylist(),
                                                    strict=True)])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.hist(sorted(Counter(e for r in rows for e in r["entity_ids"]).values()), bins=30)
    a.set(title="images per entity", xlabel="images", ylabel="entities")
    b.hist([all_scores[mask], all_scores[~mask]], bins=40, label=["kept", "dropped"],
           stacked=True)
    b.set(title="candidate scores", xlabel="cosine similarity")
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "stats.png", dpi=100)
    plt.close(fig)


def run(cfg: BuildConfig, ctx) -> dict:
    """Stage ``build``: filter rules -> I2E shards, labels, vocabulary."""
    lay = ctx.layout
    stats = build(lay.ingest, lay.score, lay.i2e, cfg)
    ctx.artifacts += [lay.i2e / "stats.json", lay.i2e / "stats.png"]
    return stats
