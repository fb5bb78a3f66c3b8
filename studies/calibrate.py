"""Choose the CLIP filter threshold on a world that is not the one it is reported on.

``build.threshold`` decides which (image, entity) candidates become labels. Picking it against
the demo world's ground truth and then reporting label precision on that same truth would be an
in-sample number. ``make calibrate SEED=S`` (``python -m studies.calibrate --seed S``) instead:

1. runs the curation stages up to ``score`` (corpus, kb, ingest, ner, baseline, score) on a
   *calibration world*: the same params with ``corpus.seed: S``, in a scratch folder
   (``.mofi/calibrate/seed<S>``), with its own control CLIP as the scorer;
2. sweeps the threshold over that world's scores with every other build rule as configured,
   scoring each value against that world's truth (precision, filter recall: what the filter
   kept of the true pairs NER + linking found);
3. picks the threshold with the highest filter recall among those reaching the target precision
   (``--target-precision``, the report's goal 0.95 by default) and, with ``--write``, puts it in
   ``params.yaml`` as ``build.threshold`` together with ``build.calibration_seed: S``.

The report stage then says where its threshold came from: held out (another seed chose it),
in-sample (this seed chose it: the label numbers are then not a result), or set by hand.
A corpus without ground truth cannot be calibrated this way (a label-free rule is needed there).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mofi_core.config.build import BuildConfig
from mofi_core.config.load import Params, load_params
from mofi_core.io import tables
from mofi_core.io.atomic import write_json
from studies.worlds import run_stages

STAGES = ("corpus", "kb", "ingest", "decontam", "ner", "baseline", "score")
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.10, 0.801, 0.01), 2))


class CalibrationError(RuntimeError):
    """The calibration world cannot choose a threshold (no truth, same seed, target missed)."""


@dataclass(frozen=True)
class Point:
    threshold: float
    precision: float
    filter_recall: float
    recall: float
    pairs: int


def sweep(root: Path, build: BuildConfig, thresholds: tuple[float, ...] = THRESHOLDS
          ) -> list[Point]:
    """Label quality at each threshold on the scored world in ``root`` (its ``data/score``,
    ``data/truth`` and ingest manifest), the other build rules as ``build`` sets them."""
    from mofi_core.curate.decontam import curated_keys, read_dropped
    from mofi_core.curate.rules import link_scores, link_values, null_cutoffs, select_labels
    from mofi_core.io.layout import Layout
    from mofi_core.report import precision_recall, read_truth, truth_pairs

    lay = Layout(root)
    dropped = read_dropped(lay.decontam)  # as build and report: near-copies never count
    true = truth_pairs(read_truth(lay.truth), curated_keys(lay.ingest, lay.decontam))
    scores = tables.read_table(lay.score / "scores.parquet", tables.SCORES)
    keep = [k not in dropped for k in scores["key"].to_pylist()]
    scores = scores.filter(pa.array(keep, pa.bool_()))
    cols = (scores["key"].to_pylist(), scores["entity_id"].to_pylist(),
            scores["score"].to_pylist())
    reachable = set(zip(cols[0], cols[1], strict=True)) & true
    # top_k ranks as build does: with ner's link scores when build.link_weight > 0
    links = link_values(cols[0], cols[1], link_scores([lay.ner / "mentions.parquet"])) \
        if build.link_weight else None
    rules = tuple(dict.fromkeys((*(r for r in build.rules if r != "fdr"), "threshold")))
    cut = null_cutoffs(lay.score / "null.parquet", build.null_quantile) \
        if "null_quantile" in rules else None
    points = []
    for t in thresholds:
        cfg = build.model_copy(update={"rules": rules, "threshold": t})
        kept = {(k, e) for k, ls in select_labels(*cols, cfg, cut, links).items()
                for e, _ in ls}
        q = precision_recall(kept, true, reachable)
        points.append(Point(t, q["precision"], q["filter_recall"], q["recall"], q["pairs"]))
    return points


def choose(points: list[Point], target_precision: float) -> Point:
    """The point with the highest filter recall among those at or above the target precision
    (the lowest threshold on ties)."""
    ok = [p for p in points if p.pairs and p.precision >= target_precision]
    if not ok:
        best = max(points, key=lambda p: p.precision)
        raise CalibrationError(
            f"no threshold in {points[0].threshold:.2f}..{points[-1].threshold:.2f} reaches "
            f"precision {target_precision:.2f} on the calibration world (best "
            f"{best.precision:.3f} at {best.threshold:.2f}); lower --target-precision or "
            "improve the scorer (baseline.steps)")
    return max(ok, key=lambda p: (p.filter_recall, -p.threshold))


def calibration_params(params_file: Path, seed: int, overrides: dict[str, Any] | None = None
                       ) -> Params:
    """The calibration world's params: ``params_file`` + overrides, with ``corpus.seed`` = seed;
    refuses a world without ground truth or the seed the project reports on."""
    project = load_params(params_file, overrides)
    if project.corpus.source != "demo":
        raise CalibrationError(
            f"corpus.source is {project.corpus.source!r}: calibration needs a world with ground "
            "truth (the demo world); set build.threshold by another rule for your own corpus")
    if seed == project.corpus.seed:
        raise CalibrationError(
            f"--seed {seed} is the corpus.seed this project reports on: the threshold would be "
            "chosen on the truth it is scored against; pick another seed")
    if project.storage.root:
        raise CalibrationError(
            f"storage.root is {project.storage.root!r}: the calibration world runs in a local "
            "scratch folder; calibrate with a params file whose storage.root is empty")
    return load_params(params_file, {**(overrides or {}), "corpus.seed": seed})


def run_world(params_file: Path, seed: int, work: Path,
              overrides: dict[str, Any] | None = None) -> None:
    """Run :data:`STAGES` for the calibration world (``corpus.seed`` = ``seed``) in ``work``."""
    calibration_params(params_file, seed, overrides)  # refuse before any work
    run_stages(params_file, {**(overrides or {}), "corpus.seed": seed}, work, STAGES,
               "calibrate")


def calibrate(params_file: Path, seed: int, work: Path, target_precision: float = 0.95,
              overrides: dict[str, Any] | None = None) -> dict:
    """Run the calibration world and choose the threshold; returns the record
    :func:`write_report` and :func:`write_choice` take."""
    params = calibration_params(params_file, seed, overrides)
    run_world(params_file, seed, work, overrides)
    points = sweep(work, params.build)
    chosen = choose(points, target_precision)
    return {"calibration_seed": seed, "target_precision": target_precision,
            "rules": list(dict.fromkeys((*params.build.rules, "threshold"))),
            "chosen": asdict(chosen), "curve": [asdict(p) for p in points]}


def write_report(record: dict, out: Path) -> None:
    """``<out>.json`` (the whole curve) and ``<out>.md`` (the choice and the curve's table)."""
    write_json(out.with_suffix(".json"), record)
    c = record["chosen"]
    lines = ["# Filter threshold calibration", "",
             f"Chosen on the calibration world `corpus.seed: {record['calibration_seed']}` "
             f"(its own truth, its own control CLIP as scorer), rules "
             f"{' + '.join(record['rules'])}: the highest filter recall at precision >= "
             f"{record['target_precision']:.2f}.", "",
             f"**threshold {c['threshold']:.2f}**: precision {c['precision']:.3f}, filter recall "
             f"{c['filter_recall']:.3f}, recall {c['recall']:.3f} ({c['pairs']} pairs) on that "
             "world. The project's own report scores this threshold on its own world.", "",
             "| threshold | precision | filter recall | pairs |", "|---|---|---|---|"]
    lines += [f"| {p['threshold']:.2f} | {p['precision']:.3f} | {p['filter_recall']:.3f} | "
              f"{p['pairs']} |" for p in record["curve"][::5]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_choice(params_file: Path, threshold: float, seed: int) -> None:
    """Put ``build.threshold`` and ``build.calibration_seed`` into ``params_file``, keeping its
    comments and layout (ruamel round trip)."""
    from ruamel.yaml import YAML

    rt = YAML()  # round trip: plain data only, comments kept
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)  # the project's style: "  - item" under a key
    path = Path(params_file)
    data = rt.load(path.read_text(encoding="utf-8"))
    build = data.setdefault("build", {})
    build["threshold"] = round(float(threshold), 2)
    if "calibration_seed" in build:
        build["calibration_seed"] = int(seed)
    else:  # right after the threshold, where a reader looks for it
        keys = list(build.keys())
        build.insert(keys.index("threshold") + 1, "calibration_seed", int(seed),
                     comment="corpus.seed of the world that chose it (make calibrate)")
    with path.open("w", encoding="utf-8") as f:
        rt.dump(data, f)
    load_params(path)  # what was written must still be valid


def main(argv: list[str] | None = None) -> int:
    import argparse

    from mofi_core.config.load import parse_assignments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, required=True, help=(
        "corpus.seed of the calibration world (must differ from the one the project reports on)"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"),
                    help="the project's params file")
    ap.add_argument("--target-precision", type=float, default=0.95,
                    help="label precision the threshold must reach there")
    ap.add_argument("--work", type=Path, default=None, help=(
        "scratch folder for the calibration world (default .mofi/calibrate/seed<S>)"))
    ap.add_argument("--write", action="store_true", help=(
        "put the chosen build.threshold and build.calibration_seed into params.yaml"))
    ap.add_argument("--set", "-S", dest="sets", action="append", default=[],
                    help="override a param for the calibration world, e.g. -S train.steps=50")
    args = ap.parse_args(argv)
    if not 0 <= args.target_precision <= 1:
        ap.error("--target-precision must be in [0, 1]")
    root = args.params.resolve().parent
    work = args.work or root / ".mofi" / "calibrate" / f"seed{args.seed}"
    try:
        record = calibrate(args.params, args.seed, work, args.target_precision,
                           parse_assignments(args.sets))
        write_report(record, root / "reports" / "calibration")
        chosen = record["chosen"]
        if args.write:
            write_choice(args.params, chosen["threshold"], args.seed)
    except Exception as err:  # one line, as the mofi commands print theirs
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"calibrate: threshold {chosen['threshold']:.2f} (precision {chosen['precision']:.3f}, "
          f"filter recall {chosen['filter_recall']:.3f} on world seed {args.seed}); "
          + (f"written to {args.params}" if args.write
             else "params.yaml unchanged (pass --write to set it)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
