"""Materialise the embedded demo world: KB, corpus shards, ground truth, GPR1200-layout benchmark.

Deterministic in ``corpus.seed``. The ground truth goes to its own folder; no curation or
training stage reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mofi_core.config import CorpusConfig
from mofi_core.demo.alttext import alt_text, choose_kind
from mofi_core.demo.entities import Entity, make_entities
from mofi_core.demo.render import draw_object, render
from mofi_core.io import tables
from mofi_core.io.atomic import atomic_dir
from mofi_core.io.shards import ShardWriter, shard_name


@dataclass(frozen=True)
class WorldStats:
    entities: int
    samples: int
    shards: int
    benchmark_images: int
    benchmark_classes: int

    def as_metrics(self) -> dict[str, int]:
        return self.__dict__.copy()


def _sample_plan(cfg: CorpusConfig, entities: list[Entity], rng: np.random.Generator) -> list:
    """(shown entities, distractor entities, alt-text kind) for every corpus image, shuffled."""
    plan = []
    for e in entities:
        for _ in range(cfg.images_per_entity):
            shown = [e]
            if rng.random() < cfg.noise.second_entity:
                other = entities[int(rng.integers(len(entities)))]
                if other is not e:
                    shown.append(other)
            distractors = []
            if rng.random() < cfg.noise.distractor:
                d = entities[int(rng.integers(len(entities)))]
                if d not in shown:
                    distractors.append(d)
            plan.append((shown, distractors, choose_kind(cfg.noise, rng)))
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def write_corpus(cfg: CorpusConfig, entities: list[Entity], corpus_dir: Path, truth_dir: Path,
                 rng: np.random.Generator) -> int:
    objects = {e.entity_id: draw_object(e) for e in entities}
    plan = _sample_plan(cfg, entities, rng)
    with atomic_dir(corpus_dir) as out, atomic_dir(truth_dir) as truth_out:
        tables.write_table(out / "kb.parquet", tables.from_rows([e.kb_row() for e in entities],
                                                                  tables.KB), tables.KB)
        (out / "shards").mkdir()
        truth_rows = []
        for start in range(0, len(plan), cfg.samples_per_shard):
            with ShardWriter(out / "shards" / shard_name(start // cfg.samples_per_shard)) as w:
                for i, (shown, distractors, kind) in enumerate(
                        plan[start:start + cfg.samples_per_shard], start):
                    key = f"{i:09d}"
                    jpg = render([(e, objects[e.entity_id]) for e in shown], cfg.image_size, rng)
                    text = alt_text(shown, distractors, kind, rng)
                    w.write(key, {"jpg": jpg, "txt": text,
                                  "json": {"key": key, "caption": text, "status": "success",
                                           "url": f"demo://{key}.jpg"}})
                    truth_rows.append({"key": key, "entity_ids": [e.entity_id for e in shown]})
        tables.write_table(truth_out / "truth.parquet",
                           tables.from_rows(truth_rows, tables.TRUTH), tables.TRUTH)
    return len(plan)


def write_benchmark(cfg: CorpusConfig, seen: list[Entity], unseen: list[Entity], out_dir: Path,
                    rng: np.random.Generator) -> int:
    """GPR1200 layout: ``{class}_{entity}_{i}.jpg``; images are fresh renders, never in training."""
    n = 0
    with atomic_dir(out_dir) as out:
        gpr = out / "gpr1200"
        gpr.mkdir()
        for cls, e in enumerate(seen + unseen):
            obj = draw_object(e)
            for i in range(cfg.benchmark.images_per_class):
                (gpr / f"{cls}_{e.entity_id}_{i}.jpg").write_bytes(
                    render([(e, obj)], cfg.image_size, rng))
                n += 1
    return n


def generate_world(cfg: CorpusConfig, corpus_dir: Path, truth_dir: Path,
                   benchmark_dir: Path) -> WorldStats:
    if cfg.benchmark.seen_classes > cfg.num_entities:
        raise ValueError(f"corpus.benchmark.seen_classes ({cfg.benchmark.seen_classes}) exceeds "
                         f"corpus.num_entities ({cfg.num_entities}); lower it")
    rng = np.random.default_rng(cfg.seed)
    entities = make_entities(cfg.num_entities + cfg.benchmark.unseen_classes, rng)
    corpus_entities = entities[:cfg.num_entities]
    unseen = entities[cfg.num_entities:]
    seen_idx = rng.choice(cfg.num_entities, cfg.benchmark.seen_classes, replace=False)
    seen = [corpus_entities[i] for i in sorted(seen_idx)]
    # separate generators: changing the benchmark never changes the corpus and vice versa
    corpus_rng, bench_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**31, 2))
    samples = write_corpus(cfg, corpus_entities, corpus_dir, truth_dir, corpus_rng)
    bench = write_benchmark(cfg, seen, unseen, benchmark_dir, bench_rng)
    shards = -(-samples // cfg.samples_per_shard)
    return WorldStats(entities=len(corpus_entities), samples=samples, shards=shards,
                      benchmark_images=bench, benchmark_classes=len(seen) + len(unseen))


def run(cfg: CorpusConfig, ctx) -> dict:
    """Stage ``corpus``: materialise the demo world under ``data/``."""
    lay = ctx.layout
    return generate_world(cfg, lay.corpus, lay.truth, lay.benchmark).as_metrics()
