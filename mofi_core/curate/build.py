"""build: apply the filter rule to the scores and materialise the Image-to-Entities dataset.

Rule: keep (image, entity) pairs with score >= ``build.threshold``; drop entities with fewer than
``build.min_images_per_entity`` images; drop images left without a label. Writes I2E shards
(``key.jpg`` + ``key.json`` with ``entity_ids``/``scores``), ``labels.parquet``, ``vocab.json``
(class index = position in ``classes``) and ``stats.json``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from mofi_core.config import BuildConfig
from mofi_core.io import tables
from mofi_core.io.atomic import atomic_dir, write_json
from mofi_core.io.shards import ShardWriter, iter_samples, list_shards, shard_name


class EmptyDatasetError(RuntimeError):
    pass


def select_labels(keys: list[str], entities: list[str], scores: list[float], cfg: BuildConfig
                  ) -> dict[str, list[tuple[str, float]]]:
    """key -> [(entity, score)] after threshold and min-images-per-entity; pure, no I/O."""
    kept: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for key, ent, sc in zip(keys, entities, scores, strict=True):
        if sc >= cfg.threshold:
            kept[key].append((ent, sc))
    counts = Counter(e for labels in kept.values() for e, _ in labels)
    vocab = {e for e, n in counts.items() if n >= cfg.min_images_per_entity}
    out = {}
    for key, labels in kept.items():
        labels = sorted((e, s) for e, s in labels if e in vocab)
        if labels:
            out[key] = labels
    return out


def build(ingest_dir: Path, scores_file: Path, out_dir: Path, cfg: BuildConfig) -> dict:
    scores = tables.read_table(scores_file, tables.SCORES)
    labels = select_labels(scores["key"].to_pylist(), scores["entity_id"].to_pylist(),
                           scores["score"].to_pylist(), cfg)
    if not labels:
        raise EmptyDatasetError(
            f"no (image, entity) pair passed build.threshold={cfg.threshold} and "
            f"build.min_images_per_entity={cfg.min_images_per_entity}: lower them or check "
            f"the score distribution in {scores_file}")
    classes = sorted({e for ls in labels.values() for e, _ in ls})
    rows: list[dict] = []
    with atomic_dir(out_dir) as out:
        (out / "shards").mkdir()
        writer = None
        for shard in list_shards(ingest_dir / "shards"):
            for s in iter_samples(shard):
                key = s["__key__"]
                if key not in labels:
                    continue
                if writer is None or writer.count >= cfg.samples_per_shard:
                    if writer is not None:
                        writer.close()
                    writer = ShardWriter(out / "shards" / shard_name(len(rows) //
                                                                     cfg.samples_per_shard))
                ents = [e for e, _ in labels[key]]
                scs = [round(float(sc), 6) for _, sc in labels[key]]
                writer.write(key, {"jpg": s["jpg"], "json": {"entity_ids": ents, "scores": scs}})
                rows.append({"key": key, "shard": writer.path.name, "entity_ids": ents,
                             "scores": scs})
        if writer is not None:
            writer.close()
        tables.write_table(out / "labels.parquet", tables.from_rows(rows, tables.LABELS),
                           tables.LABELS)
        write_json(out / "vocab.json", {"classes": classes})
        stats = dataset_stats(rows, classes, scores.num_rows)
        # the rule travels with the data so that validate checks what build actually applied
        write_json(out / "stats.json", {**stats, "rule": {
            "threshold": cfg.threshold, "min_images_per_entity": cfg.min_images_per_entity}})
    return stats


def dataset_stats(rows: list[dict], classes: list[str], pairs_in: int) -> dict:
    per_entity = Counter(e for r in rows for e in r["entity_ids"])
    labels = sum(len(r["entity_ids"]) for r in rows)
    return {"images": len(rows), "entities": len(classes), "labels": labels,
            "pairs_scored": pairs_in, "labels_per_image": labels / len(rows),
            "min_images_per_entity": min(per_entity.values()),
            "max_images_per_entity": max(per_entity.values())}


def run(cfg: BuildConfig, ctx) -> dict:
    """Stage ``build``: filter rule -> I2E shards, labels, vocabulary."""
    lay = ctx.layout
    stats = build(lay.ingest, lay.score / "scores.parquet", lay.i2e, cfg)
    ctx.artifacts.append(lay.i2e / "stats.json")
    return stats
