"""Where each curation stage spends its time: cProfile of one process per stage.

    python benchmarks/profile_stages.py [--images 10000] [--out benchmarks/profiles]

A demo world is generated, then ingest, ner, score, build and evaluate run in this process one
after the other with one worker each (cProfile sees only its own process), each profiled on its
own. For every stage ``<out>/<stage>.txt`` lists the functions by own time and by cumulative
time, and ``<out>/summary.json`` the top entries, which benchmarks/README.md cites.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
from pathlib import Path

from ratio import kb_folder

HERE = Path(__file__).resolve().parent


def _top(stats: pstats.Stats, n: int) -> list[dict]:
    rows = []
    for (file, line, func), (_cc, calls, own, cum, _callers) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": calls,
                     "own_s": own, "cumulative_s": cum})
    rows.sort(key=lambda r: -r["own_s"])
    return rows[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=HERE / "profiles")
    args = ap.parse_args()

    from mofi_core.config.build import BuildConfig
    from mofi_core.config.corpus import BenchmarkConfig, CorpusConfig
    from mofi_core.config.evaluate import EvaluateConfig
    from mofi_core.config.ingest import IngestConfig
    from mofi_core.config.ner import NerConfig
    from mofi_core.config.score import ScoreConfig
    from mofi_core.curate.build import build
    from mofi_core.curate.ingest import ingest
    from mofi_core.curate.ner import run_ner
    from mofi_core.curate.score import score
    from mofi_core.demo.world import generate_world
    from mofi_core.evaluate.run import evaluate
    from mofi_core.models.artifact import build_model, default_meta, save_model
    from mofi_core.models.factory import arch_config

    args.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    with tempfile.TemporaryDirectory(prefix="mofi-profile-") as tmp:
        root = Path(tmp)
        corpus = CorpusConfig(num_entities=200, images_per_entity=args.images // 200,
                              workers=1, benchmark=BenchmarkConfig(
                                  seen_classes=60, unseen_classes=20, images_per_class=10,
                                  labelled_train=0, labelled_val=0, labelled_test=0))
        meta = default_meta("clip", "mofi-tiny", arch_config("mofi-tiny"), "clip")
        save_model(root / "baseline", build_model(meta).eval(), meta)
        steps = {
            "generate": lambda: generate_world(corpus, root / "corpus", root / "truth",
                                               root / "bench"),
            "ingest": lambda: ingest(root / "corpus" / "shards", root / "ingest",
                                     IngestConfig(workers=1)),
            "kb": lambda: kb_folder(root),
            "ner": lambda: run_ner(root / "ingest", root / "kb",
                                   root / "ner", NerConfig(workers=1)),
            "score": lambda: score(root / "ingest", root / "ner", root / "kb",
                                   root / "baseline", root / "score", ScoreConfig()),
            "build": lambda: build(root / "ingest", root / "score", root / "i2e",
                                   BuildConfig(threshold=-1.0), ner_dir=root / "ner"),
            "evaluate": lambda: evaluate({"baseline": root / "baseline"},
                                         root / "bench" / "gpr1200", EvaluateConfig()),
        }
        for name, step in steps.items():
            prof = cProfile.Profile()
            start = time.perf_counter()
            prof.runcall(step)
            seconds = time.perf_counter() - start
            text = io.StringIO()
            stats = pstats.Stats(prof, stream=text)
            text.write(f"{name}: {seconds:.1f} s wall under cProfile ({args.images:,} images, "
                       "one process)\n\n")
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(25)
            (args.out / f"{name}.txt").write_text(text.getvalue(), encoding="utf-8")
            summary[name] = {"seconds": seconds, "top_own_time": _top(stats, 8)}
            top = summary[name]["top_own_time"][0]
            print(f"{name:<9} {seconds:7.1f} s; most own time: {top['function']} "
                  f"{top['own_s']:.1f} s", flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n",
                                           encoding="utf-8")


if __name__ == "__main__":
    main()
