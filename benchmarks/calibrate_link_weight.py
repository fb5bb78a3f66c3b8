"""Choose ``build.link_weight`` on a calibration world, never on the one it is reported on.

    python benchmarks/bench_kb_scale.py --images 50000 --kb 2000000 --seed 1   # the world
    python benchmarks/calibrate_link_weight.py \
        .mofi/bench-kb-scale/images50000-context0.5-seed1/kb2000000

Reads one KB-scale run's scores and link scores (a world whose seed is not the reported one),
applies build's rules from the project's params.yaml (threshold, top_k, min images per entity)
at each weight of a fixed grid, and measures the labels against that world's truth: precision,
filter recall (of the depicted pairs linking sent to CLIP) and their harmonic mean (F1). The
weight with the best F1 is the choice; the smallest weight wins a tie. Prints the table and
writes it as JSON beside the run (``link_weight.json``), with the world's seed, so that
params.yaml can cite where its value came from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GRID = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def sweep(run: Path, grid: tuple[float, ...] = GRID) -> dict:
    """Each weight's label quality on the run's world; ``run`` is a KB-size folder of a
    KB-scale run (``<world>/kb<N>``), its world one level up."""
    import pyarrow.parquet as pq

    from mofi_core.config.load import load_params
    from mofi_core.curate.rules import link_scores, link_values, select_labels
    from mofi_core.io import tables
    from mofi_core.report import precision_recall, read_truth, truth_pairs

    world = run.parent
    params = load_params(world / "params.yaml")
    kept = set(pq.read_table(world / "ingest" / "manifest.parquet", columns=["key"])["key"]
               .to_pylist())
    true = truth_pairs(read_truth(world / "truth"), kept)
    scores = tables.read_table(run / "score" / "scores.parquet", tables.SCORES)
    keys, ents = scores["key"].to_pylist(), scores["entity_id"].to_pylist()
    vals = scores["score"].to_pylist()
    links = link_values(keys, ents, link_scores([run / "ner" / "mentions.parquet"]))
    reachable = set(zip(keys, ents, strict=True)) & true
    rows = []
    for w in grid:
        cfg = params.build.model_copy(update={"link_weight": w})
        labels = select_labels(keys, ents, vals, cfg, links=links if w else None)
        got = {(k, e) for k, ls in labels.items() for e, _ in ls}
        q = precision_recall(got, true, reachable)
        p, r = q["precision"], q["filter_recall"]
        rows.append({"link_weight": w, "precision": p, "filter_recall": r,
                     "f1": 2 * p * r / (p + r) if p + r else 0.0, "labels": q["pairs"]})
        print(f"  link_weight {w:<6} precision {100 * p:5.1f}%  filter recall {100 * r:5.1f}%"
              f"  F1 {100 * rows[-1]['f1']:5.1f}  labels {q['pairs']:,}", flush=True)
    best = max(rows, key=lambda r: (r["f1"], -r["link_weight"]))
    return {"world_seed": params.corpus.seed, "run": str(run), "rules": list(params.build.rules),
            "threshold": params.build.threshold, "top_k": params.build.top_k,
            "criterion": "max F1 of precision and filter recall; the smallest weight on a tie",
            "chosen": best["link_weight"], "grid": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a KB-size folder of a bench_kb_scale run")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    out = sweep(args.run.resolve())
    if out["world_seed"] == 0:
        print("warning: this world has seed 0, the seed the KB-scale benchmark reports on; "
              "calibrate on another seed (bench_kb_scale.py --seed 1)", file=sys.stderr)
    (args.run / "link_weight.json").write_text(json.dumps(out, indent=1) + "\n",
                                               encoding="utf-8")
    print(f"chosen build.link_weight: {out['chosen']} (world seed {out['world_seed']}); "
          f"written to {args.run / 'link_weight.json'}")


if __name__ == "__main__":
    main()
