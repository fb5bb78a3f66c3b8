"""ner stage vs a bare ``nlp.pipe`` (same model, same texts, same batch size), in one run.

    python benchmarks/bench_ner.py [--samples 6000] [--repeats 5]

Texts come from a demo world generated into a temporary folder. The ratio is the stage's
throughput (NER + gazetteer + linking + rows) over the bare pipe's; target >= 0.90.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ratio import corpus_world, interleaved_medians, ratio_result, stage_parser, write_result


def main() -> None:
    ap = stage_parser(__doc__, samples=6000)
    args = ap.parse_args()

    from mofi_core.config.ner import NerConfig
    from mofi_core.curate.ner import extract_mentions, load_nlp
    from mofi_core.io.shards import iter_samples, list_shards
    from mofi_core.kb.store import KnowledgeBase

    with tempfile.TemporaryDirectory() as tmp:
        root = corpus_world(Path(tmp), args.samples, image_size=32)
        texts = [s["txt"].decode() for shard in list_shards(root / "corpus" / "shards")
                 for s in iter_samples(shard)]
        kb = KnowledgeBase.load(root / "corpus" / "kb.parquet")
    ner_cfg = NerConfig()
    nlp = load_nlp(ner_cfg.spacy_model)
    keys = [str(i) for i in range(len(texts))]

    def bare() -> float:
        start = time.perf_counter()
        for _ in nlp.pipe(texts, batch_size=ner_cfg.batch_size):
            pass
        return len(texts) / (time.perf_counter() - start)

    def stage() -> float:
        start = time.perf_counter()
        extract_mentions(keys, texts, kb, ner_cfg, nlp)
        return len(texts) / (time.perf_counter() - start)

    mb, ms = interleaved_medians(bare, stage, args.repeats)
    print(f"texts: {len(texts)}; median of {args.repeats}")
    print(f"bare nlp.pipe:  {mb:8,.0f} texts/s")
    print(f"ner stage:      {ms:8,.0f} texts/s")
    print(f"ratio: {ms / mb:.2f} (target >= 0.90)")
    write_result(args.json, ratio_result("ner", "texts/s", ms, mb, 0.90, args.repeats,
                                         "bare nlp.pipe, same model and batch size",
                                         samples=len(texts)))


if __name__ == "__main__":
    main()
