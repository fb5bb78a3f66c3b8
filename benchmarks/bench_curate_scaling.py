"""Time and peak memory of world generation, the kb, ingest, decontam, ner, score, build and
evaluate as the corpus grows.

    python benchmarks/bench_curate_scaling.py                      # 1k, 10k and 100k images
    python benchmarks/bench_curate_scaling.py --sizes 1000 10000 --big 1000000 --json out.json

For each size, each step runs in a fresh subprocess on the previous step's output, exactly as
its command runs it (default params, a random-weight ``mofi-tiny`` CLIP as scorer and as the
evaluated model: speed and memory do not depend on the weights): ``generate`` (the demo world),
``kb`` (the KB folder; its cost follows the KB, not the corpus), ``ingest``, ``decontam``
(perceptual hashes against the world's small benchmark), ``ner``, ``score``, ``build``, and
``evaluate`` (embed every ingested image and rank
them all, GPR1200 protocol, labels from the world's truth). ``--big`` runs only generate and
ingest at one more size. Reported per step and size: seconds, samples/s, peak RSS of the
process and of its largest worker. Target: cost linear in the images, peak memory at the
largest size <= 1.2x at 10k (streaming, no corpus-sized lists; evaluate must hold one
embedding per image, so its memory grows by design).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

STAGES = ("generate", "kb", "ingest", "decontam", "ner", "score", "build", "evaluate")
BIG_STAGES = ("generate", "ingest")
NEEDS = {"generate": (), "kb": ("generate",), "ingest": ("generate",), "decontam": ("ingest",),
         "ner": ("ingest", "kb"),
         "score": ("ner",),
         "build": ("score",), "evaluate": ("ingest",)}


def with_inputs(stages: list[str]) -> list[str]:
    """The stages and every stage whose output they read, in chain order."""
    want, todo = set(), list(stages)
    while todo:
        s = todo.pop()
        if s not in want:
            want.add(s)
            todo += NEEDS[s]
    return [s for s in STAGES if s in want]

CHILD = """
import json, resource, sys, time
from pathlib import Path
from mofi_core.config.build import BuildConfig
from mofi_core.config.ingest import IngestConfig
from mofi_core.config.ner import NerConfig
from mofi_core.config.score import ScoreConfig
stage, root = sys.argv[1], Path(sys.argv[2])
if stage == "evaluate":  # untimed: a GPR1200-layout folder of the ingested images
    import pyarrow.parquet as pq
    from mofi_core.report import read_truth
    from mofi_core.io.shards import iter_samples, list_shards
    truth = {r["key"]: r["entity_ids"][0] for r in read_truth(root / "truth").to_pylist()
             if r["entity_ids"]}
    cats = {e: i for i, e in enumerate(sorted(set(truth.values())))}
    (root / "gpr").mkdir()
    for shard in list_shards(root / "ingest" / "shards"):
        for s in iter_samples(shard):
            if s["__key__"] in truth:
                (root / "gpr" / f"{cats[truth[s['__key__']]]}_{s['__key__']}.jpg"
                 ).write_bytes(s["jpg"])
t = time.perf_counter()
if stage == "generate":
    from mofi_core.config.corpus import BenchmarkConfig, CorpusConfig
    from mofi_core.demo.world import generate_world
    n = int(sys.argv[3])
    generate_world(CorpusConfig(num_entities=200, images_per_entity=n // 200,
                   benchmark=BenchmarkConfig(seen_classes=1, unseen_classes=0,
                   images_per_class=2, labelled_train=0, labelled_val=0, labelled_test=0)),
                   root / "corpus", root / "truth", root / "bench")
elif stage == "kb":
    from mofi_core.config.kb import KBConfig
    from mofi_core.kb.importer import materialise
    materialise(KBConfig(), root / "corpus" / "kb.parquet", root / "kb", NerConfig().spacy_model)
elif stage == "ingest":
    from mofi_core.curate.ingest import ingest
    from mofi_core.io.sources import expand_sources
    ingest(expand_sources(str(root / "corpus" / "shards"), root), root / "ingest", IngestConfig())
elif stage == "decontam":
    from mofi_core.config.decontam import DecontamConfig
    from mofi_core.curate.decontam import decontaminate
    from mofi_core.io.shards import list_shards
    decontaminate(list_shards(root / "ingest" / "shards"), root / "bench", root / "decontam",
                  DecontamConfig())
elif stage == "ner":
    from mofi_core.curate.ner import run_ner
    run_ner(root / "ingest", root / "kb", root / "ner", NerConfig())
elif stage == "score":
    from mofi_core.curate.score import score
    score(root / "ingest", root / "ner", root / "kb", root / "baseline",
          root / "score", ScoreConfig())
elif stage == "build":
    from mofi_core.curate.build import build
    build(root / "ingest", root / "score", root / "i2e", BuildConfig(threshold=-1.0),
          ner_dir=root / "ner")
elif stage == "evaluate":
    from mofi_core.config.evaluate import EvaluateConfig
    from mofi_core.evaluate.run import evaluate
    evaluate({"baseline": root / "baseline"}, root / "gpr", EvaluateConfig())
secs = time.perf_counter() - t
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"seconds": secs, "rss_main_mb": own, "rss_worker_mb": kids}))
"""

MODEL = """
import sys
from pathlib import Path
from mofi_core.models.artifact import build_model, default_meta, save_model
from mofi_core.models.factory import arch_config
meta = default_meta("clip", "mofi-tiny", arch_config("mofi-tiny"), "clip")
save_model(Path(sys.argv[1]) / "baseline", build_model(meta).eval(), meta)
"""


def _py(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"benchmark child failed ({args}):\n{out.stderr[-3000:]}")
    return out.stdout


def run_size(n: int, stages: list[str], workdir: Path | None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"bench-scale-{n}-", dir=workdir) as tmp:
        _py(MODEL, tmp)
        for stage in stages:
            r = json.loads(_py(CHILD, stage, tmp, str(n)).strip().splitlines()[-1])
            r.update(stage=stage, images=n, per_s=n / r["seconds"])
            rows.append(r)
            print(f"  {n:>9,} {stage:<8} {r['seconds']:8.1f} s {r['per_s']:8,.0f}/s "
                  f"RSS {r['rss_main_mb']:6.0f} MB main, {r['rss_worker_mb']:6.0f} MB worker",
                  flush=True)
    return rows


def summarise(rows: list[dict], reference: int = 10_000) -> list[dict]:
    """Per stage: the log-log slope of time against images between the two largest sizes
    (1 = linear; fixed costs flatten it at small sizes) and peak memory at the largest size
    against ``reference`` (or the smallest size)."""
    out = []
    for stage in STAGES:
        if stage == "kb":  # the KB's size sets its cost, not the corpus's
            continue
        mine = sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["images"])
        if len(mine) < 2:
            continue
        ref = next((r for r in mine if r["images"] == reference), mine[0])
        prev, big = mine[-2], mine[-1]
        slope = (math.log(big["seconds"]) - math.log(prev["seconds"])) / \
            (math.log(big["images"]) - math.log(prev["images"]))
        out.append({"stage": stage, "from": prev["images"], "to": big["images"],
                    "time_slope": slope, "memory_ref": ref["images"],
                    "memory_ratio": max(big["rss_main_mb"], big["rss_worker_mb"])
                    / max(ref["rss_main_mb"], ref["rss_worker_mb"])})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--big", type=int, default=0, help="one more size for generate + ingest")
    ap.add_argument("--workdir", type=Path, default=None, help="where worlds are generated")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                    help="measure these (and the stages whose output they read)")
    args = ap.parse_args()
    stages = with_inputs(args.stages)
    rows = []
    for n in args.sizes:
        rows += run_size(n, stages, args.workdir)
        _write(args.json, rows)  # after every size: a long run that is cut short keeps its rows
    if args.big:
        rows += run_size(args.big, [s for s in BIG_STAGES if s in stages], args.workdir)
        _write(args.json, rows)
    print("\ncost and peak memory (targets: time slope ~1 on log-log, memory <= 1.2x of 10k):")
    for s in summarise(rows):
        print(f"  {s['stage']:<8} {s['from']:>9,} -> {s['to']:>9,} images: time slope "
              f"{s['time_slope']:.2f}, peak memory {s['memory_ratio']:.2f}x of "
              f"{s['memory_ref']:,}")


def _write(path: Path | None, rows: list[dict]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rows": rows, "summary": summarise(rows)}, indent=2) + "\n",
                        encoding="utf-8")


if __name__ == "__main__":
    main()
