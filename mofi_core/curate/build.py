"""build: apply the filter rules to the scores and materialise the Image-to-Entities dataset.

Rules (``build.rules``, combined with AND): ``threshold`` (score >= build.threshold), ``top_k``
(among the image's k best candidates, ranked by the score plus ``build.link_weight`` times the
log of ner's link score), ``null_quantile`` (score above the q-quantile of the
image's scores against random non-candidate entities, from ``score``). Then entities with fewer
than ``min_images_per_entity`` images are dropped (optionally capped at ``max_images_per_entity``,
keeping the best scores) and images left without a label are dropped.

Writes I2E shards (``key.jpg`` + ``key.txt`` alt-text + ``key.json`` with ``entity_ids`` and
``scores``), ``labels.parquet``, ``vocab.json`` (class index = position in ``classes``),
``stats.json`` and plots. Only this stage reads the rule params, so changing them re-runs only
``build`` and what follows it.
"""

from __future__ import annotations

import heapq
import json
import shutil
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mofi_core.config.build import BuildConfig
from mofi_core.curate import fdr, rules
from mofi_core.curate.decontam import read_dropped
from mofi_core.curate.rules import Labels
from mofi_core.io import tables
from mofi_core.io.atomic import atomic_dir, write_json
from mofi_core.io.shards import ShardWriter, iter_samples
from mofi_core.parallel import ShardJob, iter_shards
from mofi_core.progress import Progress

if TYPE_CHECKING:
    from mofi_core.context import StageContext


class EmptyDatasetError(RuntimeError):
    pass


class _Worst:
    """Heap order for the per-entity cap: lower score first, then the larger key (the item
    ``select_labels`` would drop first)."""

    __slots__ = ("key", "score")

    def __init__(self, score: float, key: str) -> None:
        self.score, self.key = score, key

    def __lt__(self, other: _Worst) -> bool:
        return (self.score, other.key) < (other.score, self.key)


def _shards(ingest_dir: Path, score_dir: Path) -> list[tuple[str, Path, Path, Path]]:
    parts = sorted((score_dir / "parts").glob("*.scores.parquet"))
    if not parts:
        raise FileNotFoundError(f"no score parts in {score_dir / 'parts'}; run score first")
    out = []
    for part in parts:
        name = part.name.split(".", 1)[0]
        out.append((name, part, score_dir / "parts" / f"{name}.null.parquet",
                    ingest_dir / "shards" / f"{name}.tar"))
    return out


def rules_shard(job: ShardJob, score_dir: Path, spill: Path, cfg: BuildConfig,
                exclude: frozenset[str] = frozenset(), ner_dir: Path | None = None
                ) -> tuple[list[Path], dict]:
    """Pass 1 for one shard: the per-image rules; kept pairs spilled to ``spill/<name>``.
    Returns per-entity counts (and, with a cap, each entity's best ``cap`` (score, key)).
    Candidates of ``exclude`` keys (decontam's near-copies) never become labels. With
    ``build.link_weight`` > 0, ``top_k`` reads the shard's link scores from ``ner_dir``."""
    part = score_dir / "parts" / f"{job.name}.scores.parquet"
    scores = tables.read_table(part, tables.SCORES)
    if exclude:
        import pyarrow.compute as pc

        scores = scores.filter(pc.invert(pc.is_in(scores["key"],
                                                  pa.array(sorted(exclude), pa.string()))))
    cut = rules.null_cutoffs(score_dir / "parts" / f"{job.name}.null.parquet", cfg.null_quantile) \
        if "null_quantile" in cfg.rules else {}
    keys, ents = scores["key"].to_pylist(), scores["entity_id"].to_pylist()
    links = rules.shard_links(ner_dir, part, keys, ents) if cfg.link_weight else None
    kept = rules.passes_rules(keys, ents, scores["score"].to_pylist(), cfg, cut, links)
    flat = [(k, e, sc) for k, ls in kept.items() for e, sc in ls]
    counts: Counter[str] = Counter(e for _, e, _ in flat)
    best: dict[str, list] = {}
    if cfg.max_images_per_entity:
        heaps: dict[str, list[_Worst]] = defaultdict(list)
        for k, e, sc in flat:
            _push_capped(heaps[e], _Worst(sc, k), cfg.max_images_per_entity)
        best = {e: [(w.score, w.key) for w in h] for e, h in heaps.items()}
    out = spill / f"{job.name}.parquet"
    tables.write_table(out, pa.table({
        "key": pa.array([f[0] for f in flat], pa.string()),
        "entity_id": pa.array([f[1] for f in flat], pa.string()),
        "score": pa.array([f[2] for f in flat], pa.float32())}), tables.SCORES)
    hist = np.histogram(scores["score"].to_numpy(), HIST_BINS)[0]
    return [out], {"pairs": scores.num_rows, "hist": hist.tolist(), "counts": dict(counts),
                   "best": best}


def _push_capped(heap: list[_Worst], item: _Worst, cap: int) -> None:
    heapq.heappush(heap, item)
    if len(heap) > cap:
        heapq.heappop(heap)


_CUT_CACHE: dict[str, tuple[set[str], dict[str, _Worst]]] = {}


def _read_cut(path: Path) -> tuple[set[str], dict[str, _Worst]]:
    """The vocabulary and per-entity cap cut-offs pass 1 decided (cached per worker)."""
    key = f"{path}:{path.stat().st_mtime_ns}"
    if key not in _CUT_CACHE:
        raw = json.loads(path.read_text(encoding="utf-8"))
        _CUT_CACHE.clear()
        _CUT_CACHE[key] = (set(raw["vocab"]),
                           {e: _Worst(sc, k) for e, (sc, k) in raw["cutoff"].items()})
    return _CUT_CACHE[key]


def write_shard_job(job: ShardJob, spill: Path, shards_dir: Path, cut_file: Path
                    ) -> tuple[list[Path], dict]:
    """Pass 2 for one shard: the final labels, its I2E shard and its rows of the labels table
    (``spill/<name>.labels.parquet``); returns the shard's statistics, never its rows (the
    caller's memory must not grow with the corpus)."""
    vocab, cutoff = _read_cut(cut_file)
    spilled = tables.read_table(spill / f"{job.name}.parquet", tables.SCORES)
    labels = _final_labels(spilled, vocab, cutoff)
    acc = _Accumulator(np.zeros(len(HIST_BINS) - 1, dtype=np.int64))
    if not labels:
        return [], acc.summary()
    out = shards_dir / f"{job.name}.tar"
    rows = _write_shard(Path(job.source), labels, out)
    tables.write_table(spill / f"{job.name}.labels.parquet",
                       tables.from_rows(rows, tables.LABELS), tables.LABELS)
    acc.add(rows)
    return [out], acc.summary()


def build(ingest_dir: Path, score_dir: Path, out_dir: Path, cfg: BuildConfig,
          exclude: frozenset[str] = frozenset(), ner_dir: Path | None = None) -> dict:
    """Two streaming passes over the per-shard scores (memory: one shard plus per-entity
    counters, never the corpus): 1) the per-image rules, spilled per shard; 2) the vocabulary
    and cap cut, I2E shards and labels. Same result as :func:`rules.select_labels` on
    everything. ``ner_dir``: ner's output, read when ``build.link_weight`` > 0.

    Each pass is one job per shard (``iter_shards``): in this process by default, on the Dask
    cluster when an executor address is set (the workers must see this folder)."""
    shards = _shards(ingest_dir, score_dir)
    jobs = [ShardJob(name, str(tar), None) for name, _, _, tar in shards]
    label_free = _label_free(score_dir, cfg, exclude, ner_dir)
    source = {}
    if "fdr" in cfg.rules:
        cfg, source = _fdr_rule(cfg, label_free["chosen"]), {"threshold_source": "fdr"}
    counts: Counter[str] = Counter()
    heaps: dict[str, list[_Worst]] = defaultdict(list)
    hist_all = np.zeros(len(HIST_BINS) - 1, dtype=np.int64)
    pairs_in = 0
    with atomic_dir(out_dir) as out:
        spill = out / ".pass1"
        spill.mkdir()
        # each summary is folded in as it arrives, in shard order: the same result wherever
        # the jobs ran, and only one shard's per-entity counts at a time
        progress = Progress("build pass 1/2", len(jobs), "shard")  # the rules
        for _, s, _ in iter_shards(partial(rules_shard, score_dir=score_dir, spill=spill,
                                           cfg=cfg, exclude=exclude, ner_dir=ner_dir), jobs,
                                   lambda j: [],
                                   None):
            pairs_in += s["pairs"]
            progress.advance(pairs=pairs_in)
            hist_all += np.asarray(s["hist"], dtype=np.int64)
            counts.update(s["counts"])
            for e, items in s["best"].items():
                for sc, k in items:
                    _push_capped(heaps[e], _Worst(sc, k), cfg.max_images_per_entity)
        progress.close()
        if cfg.max_images_per_entity:
            counts = Counter({e: min(n, cfg.max_images_per_entity) for e, n in counts.items()})
        vocab = {e for e, n in counts.items() if n >= cfg.min_images_per_entity}
        cutoff = {e: heap[0] for e, heap in heaps.items() if e in vocab}
        if not vocab:
            raise EmptyDatasetError(
                f"no (image, entity) pair passed build.rules={list(cfg.rules)} "
                f"(threshold={cfg.threshold}, top_k={cfg.top_k}, "
                f"null_quantile={cfg.null_quantile}) and build.min_images_per_entity="
                f"{cfg.min_images_per_entity}: relax them or check the score distribution in "
                f"{score_dir}")
        cut_file = spill / "cut.json"
        write_json(cut_file, {"vocab": sorted(vocab),
                              "cutoff": {e: [w.score, w.key] for e, w in sorted(cutoff.items())}})
        acc = _Accumulator(hist_all)
        (out / "shards").mkdir()
        progress = Progress("build pass 2/2", len(jobs), "shard")  # the I2E shards
        with pq.ParquetWriter(out / ".labels.parquet", tables.LABELS) as labels_writer:
            for job, s, _ in iter_shards(partial(write_shard_job, spill=spill,
                                                 shards_dir=out / "shards", cut_file=cut_file),
                                         jobs, lambda j: [], None):  # shard order
                acc.merge(s)
                progress.advance(images=acc.images)
                part = spill / f"{job.name}.labels.parquet"
                if part.exists():
                    labels_writer.write_table(tables.read_table(part, tables.LABELS))
        progress.close()
        shutil.rmtree(spill)
        (out / ".labels.parquet").rename(out / "labels.parquet")
        classes = sorted(acc.per_entity)
        write_json(out / "vocab.json", {"classes": classes})
        stats = acc.stats(classes, pairs_in)
        if label_free["available"]:
            stats["estimated_precision"] = fdr.labels_precision(
                tables.read_table(out / "labels.parquet", tables.LABELS), label_free.pop("pairs"))
            label_free["estimated_precision"] = stats["estimated_precision"]
        write_json(out / "label_free.json", label_free)
        # the rule travels with the data so that validate checks what build actually applied
        write_json(out / "stats.json", {**stats, "rule": {**rules.rule_summary(cfg), **source}})
        _plots(out, acc)
    return stats


def _label_free(score_dir: Path, cfg: BuildConfig, exclude: frozenset[str],
                ner_dir: Path | None) -> dict:
    """The decoy-calibrated precision estimate of this run's scores (``fdr``): the model, the
    curve over thresholds, the threshold rule ``fdr`` would pick, every candidate's posterior.
    ``available`` false (and why) when the scores carry no decoys, unless rule ``fdr`` needs
    them (an error)."""
    try:
        model, cands, post = fdr.estimate(score_dir, cfg, exclude, ner_dir)
    except fdr.LabelFreeError as err:
        if "fdr" in cfg.rules:
            raise
        print(f"build: no label-free precision estimate: {err}")
        return {"available": False, "reason": str(err)}
    points = fdr.curve(cands, post, cfg)
    chosen = None
    if "fdr" in cfg.rules:
        chosen = fdr.choose_threshold(points, cfg.target_fdr)
    else:
        try:
            chosen = fdr.choose_threshold(points, cfg.target_fdr)
        except fdr.LabelFreeError as err:
            print(f"build: label-free estimate: {err}")
    print(f"build: label-free estimate from {model.decoys} decoy scores of {model.images} "
          f"images: {100 * model.pi_none:.1f}% of images show none of their candidates"
          + (f"; estimated FDR <= {cfg.target_fdr} from threshold {chosen['threshold']:.2f}"
             if chosen else ""))
    return {"available": True, "model": model.summary(), "target_fdr": cfg.target_fdr,
            "sample": cfg.fdr_sample, "chosen": chosen, "curve": points,
            "pairs": fdr.pairs_posterior(cands, post)}


def _fdr_rule(cfg: BuildConfig, chosen: dict) -> BuildConfig:
    """Rule ``fdr`` as the threshold it chose: what pass 1 applies and stats.json records."""
    applied = tuple("threshold" if r == "fdr" else r for r in cfg.rules)
    return cfg.model_copy(update={"rules": applied, "threshold": chosen["threshold"],
                                  "calibration_seed": None})


def _final_labels(spilled, vocab: set[str], cutoff: dict[str, _Worst]) -> Labels:
    out: Labels = defaultdict(list)
    for k, e, sc in zip(spilled["key"].to_pylist(), spilled["entity_id"].to_pylist(),
                        spilled["score"].to_pylist(), strict=True):
        if e not in vocab:
            continue
        worst = cutoff.get(e)
        if worst is not None and _Worst(sc, k) < worst:
            continue
        out[k].append((e, sc))
    return {k: sorted(ls) for k, ls in out.items()}


def _write_shard(tar: Path, labels: Labels, out_tar: Path) -> list[dict]:
    """The labelled samples of one ingest shard, in its order, as one I2E shard."""
    rows: list[dict] = []
    with ShardWriter(out_tar) as writer:
        for s in iter_samples(tar):
            key = s["__key__"]
            if key not in labels:
                continue
            ents = [e for e, _ in labels[key]]
            scs = [round(float(sc), 6) for _, sc in labels[key]]
            writer.write(key, {"jpg": s["jpg"], "txt": s.get("txt", b""),
                               "json": {"entity_ids": ents, "scores": scs}})
            rows.append({"key": key, "shard": out_tar.name, "entity_ids": ents, "scores": scs})
    if len(rows) != len(labels):
        raise ValueError(f"{len(labels) - len(rows)} labelled keys have no sample in {tar}: "
                         "score and ingest outputs are out of sync; re-run both")
    return rows


HIST_BINS = np.linspace(-1.0, 1.0, 201)


class _Accumulator:
    """Dataset statistics and histograms, added shard by shard."""

    def __init__(self, hist_all: np.ndarray) -> None:
        self.per_entity: Counter[str] = Counter()
        self.images = self.labels = 0
        self.hist_all = hist_all
        self.hist_kept = np.zeros_like(hist_all)

    def add(self, rows: list[dict]) -> None:
        self.images += len(rows)
        for r in rows:
            self.per_entity.update(r["entity_ids"])
            self.labels += len(r["entity_ids"])
        kept = np.asarray([s for r in rows for s in r["scores"]], dtype=np.float64)
        self.hist_kept += np.histogram(kept, HIST_BINS)[0]

    def summary(self) -> dict:
        """What a shard job sends back: JSON-able, small (entities, not images)."""
        return {"images": self.images, "labels": self.labels,
                "per_entity": dict(self.per_entity), "hist_kept": self.hist_kept.tolist()}

    def merge(self, part: dict) -> None:
        self.images += part["images"]
        self.labels += part["labels"]
        self.per_entity.update(part["per_entity"])
        self.hist_kept += np.asarray(part["hist_kept"], dtype=np.int64)

    def stats(self, classes: list[str], pairs_in: int) -> dict:
        return {"images": self.images, "entities": len(classes), "labels": self.labels,
                "pairs_scored": pairs_in, "labels_per_image": self.labels / self.images,
                "min_images_per_entity": min(self.per_entity.values()),
                "max_images_per_entity": max(self.per_entity.values())}


def _plots(out: Path, acc: _Accumulator) -> None:
    """Entity frequency histogram and score histograms, kept vs dropped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.hist(sorted(acc.per_entity.values()), bins=30)
    a.set(title="images per entity", xlabel="images", ylabel="entities")
    used = np.flatnonzero(acc.hist_all)
    lo, hi = (used[0], used[-1] + 2) if len(used) else (0, len(HIST_BINS))
    edges = HIST_BINS[lo:hi]
    b.stairs(acc.hist_kept[lo:hi - 1], edges, fill=True, label="kept")
    b.stairs((acc.hist_all - acc.hist_kept)[lo:hi - 1], edges, label="dropped")
    b.set(title="candidate scores", xlabel="cosine similarity")
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "stats.png", dpi=100)
    plt.close(fig)


def run(cfg: BuildConfig, ctx: StageContext) -> dict:
    """Stage ``build``: filter rules -> I2E shards, labels, vocabulary."""
    lay = ctx.layout
    stats = build(lay.ingest, lay.score, lay.i2e, cfg, read_dropped(lay.decontam), lay.ner)
    ctx.artifacts += [lay.i2e / "stats.json", lay.i2e / "stats.png"]
    if cfg.publish:
        n = publish(lay.i2e, cfg.publish)
        print(f"build: copied {n} files of the I2E dataset to {cfg.publish}")
    return stats


def publish(i2e_dir: Path, url: str) -> int:
    """Copy the I2E folder to ``url`` (each object atomically); ``vocab.json`` goes last, so a
    reader that finds it finds a complete dataset."""
    from mofi_core.io import s3

    return s3.upload_dir(i2e_dir, url, last="vocab.json")
