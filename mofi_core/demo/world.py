"""Materialise the embedded demo world: KB, corpus shards, ground truth, benchmarks.

- ``data/corpus``: ``kb.parquet`` and ``shards/NNNNN.tar`` + ``NNNNN.parquet`` in img2dataset
  layout (``key.jpg``, ``key.txt``, ``key.json``; one metadata row per sample in the parquet);
- ``data/truth``: the true entities of every key, one parquet per shard. No curation or training
  stage reads it; only quality reports do;
- ``data/benchmark``: ``gpr1200/{class}_{entity}_{i}.jpg`` (GPR1200 layout), ``labelled/
  {train,val,test}/{entity}/{i}.jpg`` (ImageFolder layout, for zero-shot and linear probes) and
  ``classes.json`` (class -> entity, name, split seen/unseen). Fresh renders, never in training.

Deterministic in ``corpus.seed``: every shard draws from its own generator seeded by (seed, shard
index), so shards are byte-identical whatever the number of worker processes. Shards are rendered
in a process pool and streamed to disk; memory holds one shard per worker plus one int32 per
sample (the plan of which entity each image shows).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from mofi_core.config.corpus import CorpusConfig
from mofi_core.demo.alttext import alt_text, choose_kind
from mofi_core.demo.entities import Entity, make_entities
from mofi_core.demo.padding import kb_batches
from mofi_core.demo.render import draw_object, render
from mofi_core.io import tables
from mofi_core.io.atomic import atomic_dir
from mofi_core.io.shards import ShardWriter, shard_name

if TYPE_CHECKING:
    from mofi_core.context import StageContext

SHARD_META = pa.schema([("key", pa.string()), ("caption", pa.string()), ("url", pa.string()),
                        ("status", pa.string()), ("width", pa.int32()), ("height", pa.int32())])


@dataclass(frozen=True)
class WorldStats:
    entities: int
    samples: int
    shards: int
    benchmark_images: int
    benchmark_classes: int
    labelled_images: int

    def as_metrics(self) -> dict[str, int]:
        return self.__dict__.copy()


# -- per-worker state (set once per process by the pool initializer) -------------------------
_STATE: dict = {}


def _init_worker(cfg: CorpusConfig, entities: list[Entity], shards_dir: Path,
                 truth_dir: Path) -> None:
    _STATE.update(cfg=cfg, entities=entities, shards=shards_dir, truth=truth_dir, objects={})


def _object(e: Entity):
    objects = _STATE["objects"]
    if e.entity_id not in objects:
        objects[e.entity_id] = draw_object(e)
    return objects[e.entity_id]


def _sample(main: Entity, rng: np.random.Generator) -> tuple[list[Entity], list[Entity], str]:
    """(entities shown, entities named but not shown, alt-text kind) for one image."""
    cfg, entities = _STATE["cfg"], _STATE["entities"]
    shown = [main]
    if rng.random() < cfg.noise.second_entity:
        other = entities[int(rng.integers(len(entities)))]
        if other is not main:
            shown.append(other)
    distractors: list[Entity] = []
    for _ in range(2):  # credits, shops, locations: up to two wrong names
        if rng.random() < cfg.noise.distractor:
            d = entities[int(rng.integers(len(entities)))]
            if d not in shown and d not in distractors:
                distractors.append(d)
    return shown, distractors, choose_kind(cfg.noise, rng)


def _write_shard(job: tuple[int, int, np.ndarray]) -> int:
    """Render shard ``index`` (samples ``start..``, main entities ``plan``) to tar + parquets."""
    index, start, plan = job
    cfg, entities = _STATE["cfg"], _STATE["entities"]
    rng = np.random.default_rng([cfg.seed, index])
    meta, truth = [], []
    with ShardWriter(_STATE["shards"] / shard_name(index)) as writer:
        for offset, ent in enumerate(plan):
            key = f"{start + offset:09d}"
            shown, distractors, kind = _sample(entities[int(ent)], rng)
            jpg = render([(e, _object(e)) for e in shown], cfg.image_size, rng)
            text = alt_text(shown, distractors, kind, rng, cfg.noise.context)
            row = {"key": key, "caption": text, "url": f"demo://{key}.jpg", "status": "success",
                   "width": cfg.image_size, "height": cfg.image_size}
            writer.write(key, {"jpg": jpg, "txt": text, "json": row})
            meta.append(row)
            truth.append({"key": key, "entity_ids": [e.entity_id for e in shown]})
    stem = shard_name(index).removesuffix(".tar")
    tables.write_table(_STATE["shards"] / f"{stem}.parquet",
                       pa.Table.from_pylist(meta, schema=SHARD_META), SHARD_META)
    tables.write_table(_STATE["truth"] / f"{stem}.parquet",
                       tables.from_rows(truth, tables.TRUTH), tables.TRUTH)
    return len(plan)


def _pool(cfg: CorpusConfig, init_args: tuple) -> ProcessPoolExecutor:
    workers = cfg.workers or os.cpu_count() or 1
    # spawn: workers start clean whatever the parent has loaded (threads, torch, pyarrow pools)
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                               initializer=_init_worker, initargs=init_args)


def write_corpus(cfg: CorpusConfig, entities: list[Entity], corpus_dir: Path, truth_dir: Path,
                 plan: np.ndarray, planted: list[Planted] | None = None) -> int:
    with atomic_dir(corpus_dir) as out, atomic_dir(truth_dir) as truth_out:
        tables.write_batches(out / "kb.parquet",
                             kb_batches([e.kb for e in entities], cfg.kb_padding, cfg.seed),
                             tables.KB)
        (out / "shards").mkdir()
        n = cfg.samples_per_shard
        jobs = [(i, s, plan[s:s + n]) for i, s in enumerate(range(0, len(plan), n))]
        with _pool(cfg, (cfg, entities, out / "shards", truth_out)) as pool:
            samples = sum(pool.map(_write_shard, jobs))
        if planted:
            samples += _write_planted(cfg, planted, len(jobs), len(plan), out / "shards",
                                      truth_out, {e.entity_id for e in entities})
        # the same identity in both: the report scores a corpus against this truth only when
        # the two carry it (mofi_core.report.demo_truth)
        ident = world_identity(cfg)
        for folder in (out, truth_out):
            (folder / WORLD_FILE).write_text(json.dumps(ident, indent=1) + "\n",
                                             encoding="utf-8")
        return samples


WORLD_FILE = "world.json"


def world_identity(cfg: CorpusConfig) -> dict:
    """``{"world": id, "seed": corpus.seed}``; the id is a digest of every corpus param that
    shapes the world (not the worker count: the same world whatever it is)."""
    blob = json.dumps(cfg.result_key(), sort_keys=True).encode()
    return {"world": hashlib.sha256(blob).hexdigest()[:16], "seed": cfg.seed}


@dataclass(frozen=True)
class Planted:
    """A near-copy of an evaluation image hidden in the corpus (``corpus.planted_duplicates``)."""
    source: str        # the evaluation image, relative to data/benchmark
    kind: str          # mofi_core.demo.contaminate.KINDS
    entity: Entity
    jpg: bytes


def _write_planted(cfg: CorpusConfig, planted: list[Planted], index: int, start: int,
                   shards: Path, truth_dir: Path, kb_ids: set[str]) -> int:
    """One extra shard of near-copies captioned with their entity's name, as a scraped copy of
    a benchmark photo would be; ``truth/planted.json`` says which keys they are. Their true
    labels count only for entities in the KB (a copy of an unseen class has none to find)."""
    rng = np.random.default_rng([cfg.seed, 3_000_017])
    meta, truth, record = [], [], []
    with ShardWriter(shards / shard_name(index)) as writer:
        for offset, p in enumerate(planted):
            key = f"{start + offset:09d}"
            text = alt_text([p.entity], [], "name", rng)
            row = {"key": key, "caption": text, "url": f"demo://{key}.jpg", "status": "success",
                   "width": cfg.image_size, "height": cfg.image_size}
            writer.write(key, {"jpg": p.jpg, "txt": text, "json": row})
            meta.append(row)
            truth.append({"key": key, "entity_ids": [p.entity.entity_id]
                          if p.entity.entity_id in kb_ids else []})
            record.append({"key": key, "source": p.source, "kind": p.kind})
    stem = shard_name(index).removesuffix(".tar")
    tables.write_table(shards / f"{stem}.parquet", pa.Table.from_pylist(meta, schema=SHARD_META),
                       SHARD_META)
    tables.write_table(truth_dir / f"{stem}.parquet", tables.from_rows(truth, tables.TRUTH),
                       tables.TRUTH)
    (truth_dir / PLANTED).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return len(planted)


PLANTED = "planted.json"  # in data/truth: the near-copies of evaluation images in the corpus


def plant(cfg: CorpusConfig, classes: list[Entity], benchmark_dir: Path) -> list[Planted]:
    """``corpus.planted_duplicates`` near-copies of evaluation images (GPR1200 set and labelled
    splits), the kinds in turn, drawn from their own seeded stream."""
    from mofi_core.demo.contaminate import KINDS, near_copy

    if not cfg.planted_duplicates:
        return []
    by_id = {e.entity_id: e for e in classes}
    files = sorted(p.relative_to(benchmark_dir).as_posix()
                   for p in benchmark_dir.rglob("*.jpg"))
    rng = np.random.default_rng([cfg.seed, 2_000_003])
    picks = rng.choice(len(files), min(cfg.planted_duplicates, len(files)), replace=False)
    out = []
    for i, pick in enumerate(sorted(int(x) for x in picks)):
        rel = files[pick]
        # gpr1200/{class}_{entity}_{i}.jpg or labelled/{split}/{entity}/{i}.jpg
        entity = by_id[rel.split("/")[2]] if rel.startswith("labelled/") else \
            classes[int(rel.split("/")[1].split("_")[0])]
        kind = KINDS[i % len(KINDS)]
        out.append(Planted(rel, kind, entity,
                           near_copy((benchmark_dir / rel).read_bytes(), kind, rng)))
    return out


def _benchmark_image(e: Entity, rng: np.random.Generator, size: int) -> bytes:
    return render([(e, _object(e))], size, rng)


def write_benchmark(cfg: CorpusConfig, seen: list[Entity], unseen: list[Entity],
                    out_dir: Path) -> tuple[int, int]:
    """GPR1200-layout retrieval set + ImageFolder-layout labelled split + classes.json."""
    b = cfg.benchmark
    _init_worker(cfg, seen + unseen, out_dir, out_dir)
    n_gpr = n_lab = 0
    classes = []
    with atomic_dir(out_dir) as out:
        (out / "gpr1200").mkdir()
        for cls, e in enumerate(seen + unseen):
            rng = np.random.default_rng([cfg.seed, 1_000_003, cls])  # apart from corpus streams
            split = "seen" if cls < len(seen) else "unseen"
            classes.append({"class": cls, "entity_id": e.entity_id, "name": e.name,
                            "type": e.type, "description": e.kb.description, "split": split})
            for i in range(b.images_per_class):
                (out / "gpr1200" / f"{cls}_{e.entity_id}_{i}.jpg").write_bytes(
                    _benchmark_image(e, rng, cfg.image_size))
                n_gpr += 1
            for part, count in (("train", b.labelled_train), ("val", b.labelled_val),
                                ("test", b.labelled_test)):
                folder = out / "labelled" / part / e.entity_id
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    (folder / f"{i}.jpg").write_bytes(_benchmark_image(e, rng, cfg.image_size))
                    n_lab += 1
        (out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n", encoding="utf-8")
    return n_gpr, n_lab


def generate_world(cfg: CorpusConfig, corpus_dir: Path, truth_dir: Path,
                   benchmark_dir: Path) -> WorldStats:
    if cfg.benchmark.seen_classes > cfg.num_entities:
        raise ValueError(f"corpus.benchmark.seen_classes ({cfg.benchmark.seen_classes}) exceeds "
                         f"corpus.num_entities ({cfg.num_entities}); lower it")
    rng = np.random.default_rng(cfg.seed)
    entities = make_entities(cfg.num_entities + cfg.benchmark.unseen_classes, rng,
                             shared_alias_rate=cfg.shared_alias_rate)
    corpus_entities, unseen = entities[:cfg.num_entities], entities[cfg.num_entities:]
    seen_idx = sorted(rng.choice(cfg.num_entities, cfg.benchmark.seen_classes, replace=False))
    # which entity each image mainly shows: exactly images_per_entity each, shuffled
    plan = rng.permutation(np.repeat(np.arange(cfg.num_entities, dtype=np.int32),
                                     cfg.images_per_entity))
    # the benchmark first: the corpus may hold near-copies of it (corpus.planted_duplicates)
    classes = [corpus_entities[i] for i in seen_idx] + unseen
    n_gpr, n_lab = write_benchmark(cfg, classes[:len(seen_idx)], unseen, benchmark_dir)
    planted = plant(cfg, classes, benchmark_dir)
    samples = write_corpus(cfg, corpus_entities, corpus_dir, truth_dir, plan, planted)
    return WorldStats(entities=len(corpus_entities), samples=samples,
                      shards=-(-len(plan) // cfg.samples_per_shard) + bool(planted),
                      benchmark_images=n_gpr,
                      benchmark_classes=len(seen_idx) + len(unseen), labelled_images=n_lab)


NO_WORLD = {"world": "none", "source": "none"}
NO_WORLD_NOTE = ("corpus.source is none: no demo world, no ground truth, no demo benchmark. "
                 "ingest reads ingest.input, the KB comes from the kb section, evaluate reads "
                 "evaluate.gpr_dir.\n")


def write_no_world(corpus_dir: Path, truth_dir: Path, benchmark_dir: Path) -> None:
    """``corpus.source: none``: the stage's three outputs hold only ``world.json`` saying there
    is no world (so ``report`` knows there is no truth) and a note on where the data comes
    from (``shards/`` too, with the note and no shard); the previous demo world, if any, is
    replaced as a whole."""
    with atomic_dir(corpus_dir) as c, atomic_dir(truth_dir) as t, \
            atomic_dir(benchmark_dir) as b:
        for folder in (c, t, b):
            (folder / WORLD_FILE).write_text(json.dumps(NO_WORLD, indent=1) + "\n",
                                             encoding="utf-8")
            (folder / "README.txt").write_text(NO_WORLD_NOTE, encoding="utf-8")
        # ingest's DVC dependency (the demo's shard folder) exists, holding no shard
        (c / "shards").mkdir()
        (c / "shards" / "README.txt").write_text(NO_WORLD_NOTE, encoding="utf-8")


def run(cfg: CorpusConfig, ctx: StageContext) -> dict:
    """Stage ``corpus``: materialise the demo world under ``data/`` (``source: none``: no
    world, see :func:`write_no_world`)."""
    lay = ctx.layout
    if cfg.source == "none":
        write_no_world(lay.corpus, lay.truth, lay.benchmark)
        return {"samples": 0, "entities": 0}
    return generate_world(cfg, lay.corpus, lay.truth, lay.benchmark).as_metrics()
