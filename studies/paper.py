"""``make paper``: the paper's comparison over seeds, held out, with its ablation and both controls.

For every seed ``s`` (``--seeds``, at least 3 for a result) a scratch project
``.mofi/paper/seed<s>`` runs the pipeline's stages in-process with ``corpus.seed``,
``baseline.seed`` and ``train.seed`` set to ``s`` (another world *and* another initialisation):

1. the world and its scorer: corpus, ingest, decontam, ner, baseline, score;
2. the filter threshold, chosen on the **next seed's world** (its truth, its scorer) exactly as
   ``make calibrate`` does: no seed's label numbers come from a threshold its own truth chose;
3. build, validate and every ``train.recipes`` candidate as its ``train@<recipe>`` stage;
4. two models only this study trains: contrastive on entity **names only** (the description
   ablation) and the control CLIP trained for ``baseline.steps + train.steps`` (the MOFI line's
   total compute: its scorer plus its own training), beside the control at the same steps;
5. evaluate all of them on the seed's benchmark, and label quality against the seed's truth.

Then per model and metric mean ± sample std over the seeds, and per claim of
:mod:`mofi_core.claims` how many seeds agree. ``reports/paper.{md,json}`` hold it;
docs/results.md and the README's headline are generated from ``reports/paper.md``
(``python -m tools.docs_results``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from mofi_core.claims import CLAIMS, model_rows
from mofi_core.config.load import load_params
from mofi_core.io.atomic import write_json
from mofi_core.recipes import (
    COMPUTE_CONTROL_MODEL,
    CONTROL_MODEL,
    MOFI_RECIPES,
    NAME_ONLY_MODEL,
    model_label,
)
from studies.calibrate import STAGES as WORLD_STAGES
from studies.calibrate import choose, sweep
from studies.worlds import run_stages, stage_seconds, timed

METRICS = ("gpr_map", "gpr_map_seen", "gpr_map_unseen", "recall_at_1", "zero_shot_top1",
           "probe_top1")


def seed_overrides(seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    return {**overrides, "corpus.seed": seed, "baseline.seed": seed, "train.seed": seed}


def _train_extra(root: Path, params, label: str) -> tuple[dict[str, Path], dict[str, int]]:
    """The ablation and the same-compute control, trained with the library (not DAG stages:
    they exist only in this study); skipped when their folder is complete. Also returns the
    optimiser steps each one's training history ended at (``extra-steps.json``)."""
    from mofi_core.curate.decontam import read_dropped
    from mofi_core.io.layout import Layout
    from mofi_core.train.run import train_model

    lay = Layout(root)
    out = {NAME_ONLY_MODEL: lay.model(NAME_ONLY_MODEL),
           COMPUTE_CONTROL_MODEL: lay.model(COMPUTE_CONTROL_MODEL)}
    jobs = {
        NAME_ONLY_MODEL: (lay.i2e, params.train.model_copy(
            update={"recipe": "contrastive", "entity_text": "name"}), frozenset()),
        COMPUTE_CONTROL_MODEL: (lay.ingest, params.baseline.model_copy(
            update={"steps": params.baseline.steps + params.train.steps}),
            read_dropped(lay.decontam)),
    }
    record = root / "extra-steps.json"
    steps = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    for name, (data, cfg, exclude) in jobs.items():
        if (out[name] / "model.json").is_file() and name in steps:
            print(f"{label}: {name} already trained in {root.name}")
            continue
        print(f"{label}: {name} ({cfg.recipe}, {cfg.steps} steps, {root.name})")
        with timed(root, name):
            history = train_model(data, out[name], cfg, lambda step, row: None,
                                  kb_path=lay.kb, exclude=exclude)
        steps[name] = int(history[-1]["step"])
        write_json(record, steps)
    return out, steps


def run_seed(params_file: Path, seed: int, calibration_root: Path, work: Path,
             overrides: dict[str, Any], target_precision: float) -> dict:
    """Steps 2-5 for one seed (its world already run); returns its record."""
    from mofi_core.evaluate.run import evaluate
    from mofi_core.io.layout import Layout
    from mofi_core.report import label_quality, read_truth

    over = seed_overrides(seed, overrides)
    calibration = load_params(params_file, seed_overrides(
        int(calibration_root.name.removeprefix("seed")), overrides))
    chosen = choose(sweep(calibration_root, calibration.build), target_precision)
    over.update({"build.threshold": chosen.threshold,
                 "build.calibration_seed": calibration.corpus.seed})
    params = load_params(params_file, over)
    trains = tuple(f"train@{r}" for r in params.train.recipes)
    run_stages(params_file, over, work, ("build", "validate", *trains), "paper")
    models = {r: Layout(work).model(r) for r in params.train.recipes}
    extra, extra_steps = _train_extra(work, params, "paper")
    models.update(extra)
    lay = Layout(work)
    models[CONTROL_MODEL] = lay.baseline_model
    with timed(work, "evaluate (every model)"):
        results = evaluate(models, lay.gpr, params.evaluate, lay.benchmark / "classes.json",
                           lay.benchmark / "labelled", lay.kb)
    import pyarrow.parquet as pq

    from mofi_core.curate.decontam import curated_keys

    labels = label_quality(read_truth(lay.truth), curated_keys(lay.ingest, lay.decontam),
                           pq.read_table(lay.ner / "mentions.parquet"),
                           pq.read_table(lay.i2e / "labels.parquet"))
    return {"seed": seed, "threshold": chosen.threshold,
            "calibration_seed": calibration.corpus.seed,
            "labels": {k: labels[k] for k in ("raw_ner", "filtered")},
            "extra_steps": extra_steps,
            "stage_seconds": stage_seconds(work),
            "models": model_rows(results)}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(records: list[dict]) -> dict:
    """Mean ± std per model and metric; per claim the seeds where it held."""
    models: dict[str, dict[str, dict[str, float]]] = {}
    names = list(dict.fromkeys(m for r in records for m in r["models"]))
    for name in names:
        for metric in METRICS:
            vals = [r["models"][name][metric] for r in records
                    if metric in r["models"].get(name, {})]
            if len(vals) == len(records):
                mean, std = mean_std(vals)
                models.setdefault(name, {})[metric] = {"mean": mean, "std": std}
    claims = {}
    for c in CLAIMS:
        per_seed = [c.verdict(r["models"]) for r in records]
        if any(v is None for v in per_seed):
            continue
        held = sum(v[2] for v in per_seed)  # type: ignore[index]
        diffs = [v[0] - v[1] for v in per_seed]  # type: ignore[index]
        claims[c.key] = {"text": c.text, "metric": c.metric, "better": c.better,
                         "worse": c.worse, "held_seeds": held, "seeds": len(records),
                         "mean_difference": statistics.fmean(diffs),
                         "verdict": "held" if held == len(records) else
                         ("not held" if held == 0 else "mixed")}
    labels = {}
    for key in ("precision", "filter_recall"):
        mean, std = mean_std([r["labels"]["filtered"][key] for r in records])
        labels[key] = {"mean": mean, "std": std}
    return {"models": models, "claims": claims, "labels": labels}


def _time_line(study: dict) -> str:
    """The study's time: its stages' summed wall time (resumed runs included, pauses between
    them not), and this invocation's wall time when it differs."""
    total, wall = study.get("stage_seconds"), study["seconds"]
    if total is None:  # a study written before stage times were recorded
        return f"{wall:.0f} s on this machine"
    line = f"{total / 60:.0f} min of stage time on this machine"
    if abs(wall - total) > max(60.0, 0.1 * total):  # resumed, or a long non-stage part
        line += f" (this invocation's wall time: {wall / 60:.0f} min)"
    return line


def paper_markdown(study: dict) -> str:
    s, seeds = study["summary"], [r["seed"] for r in study["records"]]
    b = study["budget"]
    lines = ["# MOFI paper comparison over seeds", "",
             f"Seeds {', '.join(map(str, seeds))} (world, scorer and training seed together); "
             f"every model {b['steps']} steps × {b['batch_size']} images, the same-compute "
             f"control {b['compute_steps']} steps; {_time_line(study)}. "
             "Mean ± sample std over the seeds; a claim *held* only when every seed agrees.", "",
             "## Every model", "",
             "| model | mAP all | mAP unseen | R@1 | zero-shot top-1 | linear probe top-1 |",
             "|---|---|---|---|---|---|"]
    for name, m in s["models"].items():
        cells = [m.get(k) for k in ("gpr_map", "gpr_map_unseen", "recall_at_1",
                                    "zero_shot_top1", "probe_top1")]
        lines.append(f"| {model_label(name)} | " + " | ".join(
            "n/a" if c is None else f"{c['mean']:.4f} ± {c['std']:.4f}" for c in cells) + " |")
    p, r = s["labels"]["precision"], s["labels"]["filter_recall"]
    thresholds = ", ".join(f"seed {x['seed']}: {x['threshold']:.2f} (chosen on seed "
                           f"{x['calibration_seed']})" for x in study["records"])
    lines += ["", f"Label precision {100 * p['mean']:.1f} ± {100 * p['std']:.1f}% at filter "
              f"recall {100 * r['mean']:.1f} ± {100 * r['std']:.1f}%, each seed held out from "
              "the world that "
              f"chose its threshold ({thresholds}).", "",
              "## The paper's claims", ""]
    for c in s["claims"].values():
        lines.append(f"- {c['text']}: **{c['verdict']}** ({c['held_seeds']}/{c['seeds']} seeds; "
                     f"mean {c['metric']} difference {c['mean_difference']:+.4f})")
    return "\n".join(lines) + "\n"


def run_paper(params_file: Path, seeds: list[int], work: Path, out: Path,
              overrides: dict[str, Any] | None = None, target_precision: float = 0.95) -> dict:
    if len(set(seeds)) < 2:
        raise ValueError("--seeds: at least two different seeds (each seed's threshold is "
                         "chosen on another seed's world); three or more for a result")
    # every recipe is a candidate here (the demo leaves contrastive out to fit its budget)
    overrides = {"train.recipes": list(MOFI_RECIPES), **(overrides or {})}
    start = time.perf_counter()
    roots = {s: work / f"seed{s}" for s in seeds}
    for s in seeds:  # every world first: each seed calibrates on the next one's
        run_stages(params_file, seed_overrides(s, overrides), roots[s], WORLD_STAGES, "paper")
    records = [run_seed(params_file, s, roots[seeds[(i + 1) % len(seeds)]], roots[s],
                        overrides, target_precision) for i, s in enumerate(seeds)]
    params = load_params(params_file, overrides)
    study = {"records": records, "summary": summarise(records),
             "budget": {"steps": params.train.steps, "batch_size": params.train.batch_size,
                        "compute_steps": params.baseline.steps + params.train.steps},
             "overrides": overrides, "seconds": time.perf_counter() - start,
             "stage_seconds": sum(sum(r["stage_seconds"].values()) for r in records)}
    write_json(out.with_suffix(".json"), study)
    out.with_suffix(".md").write_text(paper_markdown(study), encoding="utf-8")
    return study


def main(argv: list[str] | None = None) -> int:
    from mofi_core.config.load import parse_assignments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path(".mofi/paper"))
    ap.add_argument("--out", type=Path, default=Path("reports/paper"))
    ap.add_argument("--target-precision", type=float, default=0.95)
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[],
                    help="override a param for every seed, e.g. -S train.steps=300")
    args = ap.parse_args(argv)
    study = run_paper(args.params, args.seeds, args.work, args.out, parse_assignments(args.sets),
                      args.target_precision)
    print(paper_markdown(study))
    print(f"wrote {args.out.with_suffix('.md')} and .json in {study['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
