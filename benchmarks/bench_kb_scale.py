"""The paper's KB scale on one machine: one corpus, linked against KBs of growing size.

    python benchmarks/bench_kb_scale.py                        # 1M images; KB 200 -> 2M
    python benchmarks/bench_kb_scale.py --quick                # 20k images; KB 200 -> 200k
    python benchmarks/bench_kb_scale.py --images 100000 --kb 200 2000000 --json out.json

One demo world of ``--images`` images (200 depicted entities; alt-text naming what it is at
``--context``), its control CLIP trained once (the scorer, ``baseline.steps``), then for each KB
size the same corpus through ``kb`` (the depicted entities plus Wikidata-shaped padding:
``corpus.kb_padding`` at its params.yaml rates), ``ner``, ``score``, ``build`` (the project's
rules: the threshold ``make calibrate`` chose on another world, and ``top_k``) and ``validate``,
each step a fresh process on the previous step's output, as its command runs it. Reported per KB
size and step: seconds, images/s, peak RSS of the step's process and of its largest worker; and
against the world's truth: the pairs sent to CLIP, a depicted entity among a mention's
candidates sent on (recall at the cut), top-1 on ambiguous mentions (by each kind of evidence
alone, and all), label precision and filter recall after the CLIP filter, and the label-free
estimate against the truth.

Targets (issue 37): every step completes at 2M entities x 1M images; peak RSS of any process
<= 4 GB; ner and score throughput >= 0.8x their throughput with the 200-entity KB on the same
corpus; recall at the cut >= 99 %; top-1 on ambiguous mentions >= 80 %; label precision and
filter recall within 2 points of the 200-entity KB's; the label-free estimate within 3 points
of the truth at every KB size; the whole curation at 2M x 1M under an hour on 2 cores.
Resumable: a step whose result is in ``--workdir`` is not run again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

STEPS = ("kb", "ner", "score", "build", "validate")
QUICK = {"images": 20_000, "kb": [200, 20_000, 200_000]}
FULL = {"images": 1_000_000, "kb": [200, 20_000, 200_000, 2_000_000]}

CHILD = """
import json, resource, sys, time
from pathlib import Path
from mofi_core.config.load import load_params
step, root, kb_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
p = load_params(root / "params.yaml")
t = time.perf_counter()
extra = {}
if step == "world":
    from mofi_core.demo.world import generate_world
    generate_world(p.corpus, root / "corpus", root / "truth", root / "bench")
elif step == "ingest":
    from mofi_core.curate.ingest import ingest
    from mofi_core.io.sources import expand_sources
    ingest(expand_sources(str(root / "corpus" / "shards"), root), root / "ingest", p.ingest)
elif step == "baseline":
    from mofi_core.train.run import train_model
    train_model(root / "ingest", root / "baseline", p.baseline, lambda s, r: None)
elif step == "kb":
    import pyarrow as pa
    from mofi_core.demo.padding import kb_batches
    from mofi_core.io import tables
    from mofi_core.kb.importer import materialise
    from mofi_core.kb.store import KnowledgeBase
    size = int(sys.argv[5])
    depicted = list(KnowledgeBase.load(root / "corpus" / "kb.parquet"))[:p.corpus.num_entities]
    pad = p.corpus.kb_padding.model_copy(update={"entities": size - len(depicted)})
    src = kb_dir.parent / "kb-source.parquet"
    tables.write_batches(src, kb_batches(depicted, pad, p.corpus.seed), tables.KB)
    t = time.perf_counter()  # the kb stage itself: read, check, index, phrases
    extra = materialise(p.kb.model_copy(update={"source": "parquet", "path": str(src)}), src,
                        kb_dir, p.ner.spacy_model)
elif step == "ner":
    from mofi_core.curate.ner import run_ner
    extra = run_ner(root / "ingest", kb_dir, out / "ner", p.ner)
elif step == "score":
    from mofi_core.curate.score import score
    extra = score(root / "ingest", out / "ner", kb_dir, root / "baseline", out / "score",
                  p.score)
elif step == "build":
    from mofi_core.curate.build import build
    extra = build(root / "ingest", out / "score", out / "i2e", p.build, ner_dir=out / "ner")
elif step == "validate":
    from mofi_core.validate.suites import Inputs, ValidationFailed, validate
    try:
        validate(Inputs(i2e=out / "i2e", kb=kb_dir, manifest=root / "ingest" / "manifest.parquet",
                        mentions=out / "ner" / "mentions.parquet",
                        scores=out / "score" / "scores.parquet"),
                 out / "validate.json", p.validate_)
        extra = {"passed": True}
    except ValidationFailed as err:
        extra = {"passed": False, "why": str(err).splitlines()[0]}
secs = time.perf_counter() - t
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
flat = {k: v for k, v in (extra or {}).items() if isinstance(v, (int, float, str, bool))}
print(json.dumps({"seconds": secs, "rss_main_mb": own, "rss_worker_mb": kids, **flat}))
"""

QUALITY = """
import json, sys
from pathlib import Path
import pyarrow.parquet as pq
from mofi_core.config.load import load_params
from mofi_core.kb.store import KnowledgeBase
from mofi_core.report import (label_free_quality, label_quality, linking_evidence, read_truth,
                              truth_pairs)
root, kb_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
p = load_params(root / "params.yaml")
truth = read_truth(root / "truth")
manifest = pq.read_table(root / "ingest" / "manifest.parquet", columns=["key", "text"])
kept = set(manifest["key"].to_pylist())
mentions = pq.read_table(out / "ner" / "mentions.parquet")
q = label_quality(truth, kept, mentions, pq.read_table(out / "i2e" / "labels.parquet"))
true = truth_pairs(truth, kept)
texts = dict(zip(manifest["key"].to_pylist(), manifest["text"].to_pylist()))
evidence = linking_evidence(mentions, texts, KnowledgeBase.open(kb_dir), true,
                            p.ner.link_weights.model_dump(), p.ner.max_candidates)
stats = json.loads((out / "i2e" / "stats.json").read_text())
lf = label_free_quality(json.loads((out / "i2e" / "label_free.json").read_text()),
                        out / "score", frozenset(), true, stats["rule"], out / "ner")
print(json.dumps({"pairs_to_clip": sum(e is not None for e in mentions["entity_id"].to_pylist()),
                  "raw": q["raw_ner"], "filtered": q["filtered"], "linking": q["linking"],
                  "evidence": evidence, "vocabulary": stats.get("classes"),
                  "rule": {k: stats["rule"].get(k) for k in ("rules", "threshold", "top_k",
                                                             "link_weight")},
                  "label_free": {k: lf.get(k) for k in ("estimated_precision", "useful_range",
                                                        "chosen")}}))
"""


def _py(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"benchmark child failed ({args[:2]}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _params(root: Path, images: int, context: float, seed: int) -> None:
    """The project's params.yaml, with this world's size (200 entities x images/200) and seed."""
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mofi_core.config.load import apply_overrides, read_params_file

    repo = Path(__file__).resolve().parents[1]
    raw = apply_overrides(read_params_file(repo / "params.yaml"), {
        "corpus.images_per_entity": images // 200, "corpus.noise.context": context,
        "corpus.seed": seed,
        "corpus.planted_duplicates": 0, "corpus.benchmark.seen_classes": 1,
        "corpus.benchmark.unseen_classes": 0, "corpus.benchmark.labelled_train": 0,
        "corpus.benchmark.labelled_val": 0, "corpus.benchmark.labelled_test": 0,
        "runtime.validate.data_docs": False})
    (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")


def _step(record: dict, name: str, run) -> dict:
    """Run a step unless the record holds its result (a resumed benchmark)."""
    if name not in record:
        record[name] = run()
        print(f"  {name:<22} {record[name].get('seconds', 0):8.1f} s  RSS "
              f"{record[name].get('rss_main_mb', 0):6.0f} MB main, "
              f"{record[name].get('rss_worker_mb', 0):6.0f} MB worker", flush=True)
    return record[name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k images, KB up to 200k")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--kb", type=int, nargs="+", default=None, help="KB sizes (entities)")
    ap.add_argument("--context", type=float, default=0.5, help=(
        "corpus.noise.context of the world: the share of captions that also say what the "
        "entity is"))
    ap.add_argument("--seed", type=int, default=0, help=(
        "corpus.seed of the world (and of its KB padding); 0 reports, another seed calibrates"))
    ap.add_argument("--workdir", type=Path, default=Path(".mofi/bench-kb-scale"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    preset = QUICK if args.quick else FULL
    images, sizes = args.images or preset["images"], args.kb or preset["kb"]
    root = (args.workdir / (f"images{images}-context{args.context}"
                            + (f"-seed{args.seed}" if args.seed else ""))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    state = root / "record.json"
    record = json.loads(state.read_text()) if state.is_file() else {}
    record.update(images=images, context=args.context, seed=args.seed)

    def save() -> None:
        state.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        if args.json:
            args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    if not (root / "params.yaml").is_file():
        _params(root, images, args.context, args.seed)
    print(f"world: {images:,} images, KB sizes {sizes}, in {root}")
    for name in ("world", "ingest", "baseline"):
        _step(record, name, lambda n=name: _py(CHILD, n, str(root), "-", "-"))
        save()
    for size in sizes:
        out = root / f"kb{size}"
        rec = record.setdefault(f"kb{size}", {"entities": size})
        for name in STEPS:
            _step(rec, name, lambda n=name, o=out, k=size: _py(
                CHILD, n, str(root), str(o / "kb"), str(o), str(k)))
            save()
        _step(rec, "quality", lambda o=out: _py(QUALITY, str(root), str(o / "kb"), str(o)))
        save()
    print(json.dumps({k: v for k, v in record.items() if k.startswith("kb")}, indent=1)[:4000])
    print(f"wall so far: {time.strftime('%H:%M')}; record in {state}")


if __name__ == "__main__":
    main()
