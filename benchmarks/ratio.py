"""Shared timing for ratio benchmarks: the stage and its raw baseline, measured in one run,
and the one JSON shape every benchmark writes with ``--json`` (read by ``suite.py``)."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path


def stage_parser(doc: str, samples: int) -> argparse.ArgumentParser:
    """The options every stage-vs-baseline benchmark takes: corpus size, repeats, --json."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--samples", type=int, default=samples)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the result here")
    return ap


def interleaved_medians(bare: Callable[[], float], stage: Callable[[], float],
                        repeats: int) -> tuple[float, float]:
    """Median throughput of each after one warm-up call; the calls alternate, so drift on a
    shared host hits both alike."""
    bare(), stage()
    b, s = [], []
    for _ in range(repeats):
        b.append(bare())
        s.append(stage())
    return statistics.median(b), statistics.median(s)


def ratio_result(bench: str, unit: str, stage_per_s: float, baseline_per_s: float,
                 target: float, repeats: int, baseline: str, **extra) -> dict:
    """A stage's throughput against its raw baseline's (higher ratio = closer to the bare
    work); ``target`` is the least acceptable ratio."""
    return {"bench": bench, "unit": unit, "stage_per_s": stage_per_s,
            "baseline_per_s": baseline_per_s, "ratio": stage_per_s / baseline_per_s,
            "target": target, "repeats": repeats, "baseline": baseline, **extra}


def write_result(path: Path | None, result: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def corpus_world(root: Path, samples: int, **corpus) -> Path:
    """A demo world of about ``samples`` corpus images (200 entities) under ``root``, with a
    minimal benchmark and the KB folder the ``kb`` stage writes (``root/kb``): the input of the
    stage benchmarks. ``corpus`` overrides CorpusConfig."""
    from mofi_core.config.corpus import BenchmarkConfig, CorpusConfig
    from mofi_core.demo.world import generate_world

    cfg = CorpusConfig(num_entities=200, images_per_entity=max(1, samples // 200),
                       benchmark=BenchmarkConfig(seen_classes=1, unseen_classes=0,
                                                 images_per_class=2, labelled_train=0,
                                                 labelled_val=0, labelled_test=0),
                       **{"planted_duplicates": 0, **corpus})  # no near-copies: pure speed
    generate_world(cfg, root / "corpus", root / "truth", root / "bench")
    kb_folder(root)
    return root


def kb_folder(root: Path) -> Path:
    """``root/kb``: the KB folder the ``kb`` stage writes from ``root/corpus/kb.parquet`` (default
    params, the default spaCy pipeline's phrase index), which ner, score and train open."""
    from mofi_core.config.kb import KBConfig
    from mofi_core.config.ner import NerConfig
    from mofi_core.kb.importer import materialise

    materialise(KBConfig(), root / "corpus" / "kb.parquet", root / "kb", NerConfig().spacy_model)
    return root / "kb"
