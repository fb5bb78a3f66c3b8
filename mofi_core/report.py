"""report: does the demo world show the paper's effects? Label quality against the ground truth
at each curation step, and retrieval of the trained encoder against the CLIP control.

This is the only stage that reads ``data/truth``. On a real corpus there is no truth: the stage
then reports retrieval only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from mofi_core.claims import model_rows, verdicts
from mofi_core.config import ReportConfig
from mofi_core.io import tables
from mofi_core.io.atomic import write_bytes, write_json
from mofi_core.recipes import model_label

if TYPE_CHECKING:
    from mofi_core.context import StageContext

Pairs = set[tuple[str, str]]


class PaperDirectionError(RuntimeError):
    """The demo world no longer shows the paper's effects (report.require_paper_direction)."""


def read_truth(truth_dir: Path) -> pa.Table:
    files = sorted(truth_dir.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no ground truth in {truth_dir}; it exists only for the demo "
                                "world (corpus.source: demo)")
    return pa.concat_tables(tables.read_table(f, tables.TRUTH) for f in files)


def precision_recall(predicted: Pairs, truth: Pairs, reachable: Pairs | None = None
                     ) -> dict[str, float]:
    """``recall`` is over every true pair; ``filter_recall`` over the true pairs that NER and
    linking found (``reachable``), i.e. what the CLIP filter kept of what it could keep."""
    hits = len(predicted & truth)
    out = {"precision": hits / len(predicted) if predicted else 0.0,
           "recall": hits / len(truth) if truth else 0.0, "pairs": len(predicted)}
    if reachable is not None:
        out["filter_recall"] = len(predicted & reachable) / len(reachable) if reachable else 0.0
    return out


GOAL_PRECISION, GOAL_FILTER_RECALL = 0.95, 0.80


def linking_accuracy(mentions: pa.Table, true: Pairs) -> dict[str, float]:
    """Among mentions with several candidates of which one is right: how often the highest
    ``link_score`` (type fit, co-mentions) is a right one, before CLIP decides."""
    best: dict[tuple[str, int], tuple[float, str, bool]] = {}
    n_cands: dict[tuple[str, int], int] = {}
    any_true: dict[tuple[str, int], bool] = {}
    for k, st, e, ls in zip(mentions["key"].to_pylist(), mentions["start"].to_pylist(),
                            mentions["entity_id"].to_pylist(),
                            mentions["link_score"].to_pylist(), strict=True):
        if e is None:
            continue
        m = (k, st)
        n_cands[m] = n_cands.get(m, 0) + 1
        hit = (k, e) in true
        any_true[m] = any_true.get(m, False) or hit
        if m not in best or (ls, e) > best[m][:2]:
            best[m] = (ls, e, hit)
    ambiguous = [m for m, n in n_cands.items() if n > 1 and any_true[m]]
    right = sum(best[m][2] for m in ambiguous)
    return {"ambiguous_mentions": len(ambiguous),
            "top_link_right": right / len(ambiguous) if ambiguous else 0.0}


def truth_pairs(truth: pa.Table, kept_keys: set[str]) -> Pairs:
    return {(k, e) for k, es in zip(truth["key"].to_pylist(), truth["entity_ids"].to_pylist(),
                                     strict=True) if k in kept_keys for e in es}


def label_quality(truth: pa.Table, kept_keys: set[str], mentions: pa.Table, labels: pa.Table
                  ) -> dict[str, dict[str, float]]:
    """(key, entity) pairs: raw NER/linking candidates and the filtered I2E labels vs truth.

    Only keys that survived ingest count, so rejected samples don't bias recall."""
    true = truth_pairs(truth, kept_keys)
    raw: Pairs = {(k, e) for k, e in zip(mentions["key"].to_pylist(),
                                          mentions["entity_id"].to_pylist(), strict=True) if e}
    kept: Pairs = {(k, e) for k, es in zip(labels["key"].to_pylist(),
                                            labels["entity_ids"].to_pylist(), strict=True)
                   for e in es}
    return {"raw_ner": precision_recall(raw, true),
            "filtered": precision_recall(kept, true, raw & true),
            "linking": linking_accuracy(mentions, true)}


def rule_variants(rule: dict, score_dir: Path, truth_pairs: Pairs) -> dict[str, dict]:
    """Label quality of each filter rule alone (with build's settings) and of the applied
    combination, from the kept scores: what each rule buys, on the same candidates."""
    from mofi_core.config import BuildConfig
    from mofi_core.curate.rules import null_cutoffs, select_labels

    scores = tables.read_table(score_dir / "scores.parquet", tables.SCORES)
    cols = (scores["key"].to_pylist(), scores["entity_id"].to_pylist(),
            scores["score"].to_pylist())
    base = {k: v for k, v in rule.items() if k in BuildConfig.model_fields and k != "rules"}
    reachable = {(k, e) for k, e in zip(cols[0], cols[1], strict=True)} & truth_pairs
    has_null = (score_dir / "null.parquet").is_file()
    out = {}
    for rules in (("threshold",), ("top_k",), ("null_quantile",), tuple(rule["rules"])):
        if "null_quantile" in rules and not has_null:
            continue
        cfg = BuildConfig(**base, rules=rules)
        cut = null_cutoffs(score_dir / "null.parquet", cfg.null_quantile) \
            if "null_quantile" in rules else None
        kept = {(k, e) for k, ls in select_labels(*cols, cfg, cut).items() for e, _ in ls}
        # the key becomes an MLflow metric name: letters, digits, _ - . / and spaces only
        out["_and_".join(rules)] = precision_recall(kept, truth_pairs, reachable)
    return out


def threshold_choice(rule: dict, report_seed: int) -> dict:
    """Where the filter threshold came from, relative to the world the labels are scored on."""
    seed = rule.get("calibration_seed")
    kind = "by hand" if seed is None else ("in-sample" if seed == report_seed else "held out")
    return {"threshold": rule.get("threshold"), "calibration_seed": seed,
            "report_seed": report_seed, "kind": kind}


def _choice_line(choice: dict) -> str:
    t, seed, here = choice["threshold"], choice["calibration_seed"], choice["report_seed"]
    if choice["kind"] == "held out":
        return (f"Threshold {t}: chosen by `mofi calibrate` on world seed {seed}; the numbers "
                f"above are on world seed {here}, which did not choose it (**held out**).")
    if choice["kind"] == "in-sample":
        return (f"Threshold {t}: chosen on this world's own truth (seed {here}): the label "
                "numbers above are **in-sample**, not a result; run `mofi calibrate --seed "
                "<another> --write`.")
    return (f"Threshold {t}: set by hand (build.calibration_seed is null); run `mofi calibrate "
            "--seed <another seed> --write` to choose it on a held-out world.")


def decontam_quality(dropped: pa.Table, metrics: dict, truth_dir: Path) -> dict:
    """What decontam dropped and, where the demo world planted near-copies of evaluation images
    (``data/truth/planted.json``), how many of each kind it caught and how many clean images it
    dropped with them."""
    from mofi_core.demo.world import PLANTED

    keys = set(dropped["key"].to_pylist())
    out: dict = {"method": metrics.get("method"), "checked": metrics.get("checked", 0),
                 "dropped": len(keys)}
    planted_file = truth_dir / PLANTED
    if planted_file.is_file():
        planted = json.loads(planted_file.read_text(encoding="utf-8"))
        kinds: dict[str, dict[str, int]] = {}
        for p in planted:
            k = kinds.setdefault(p["kind"], {"planted": 0, "caught": 0})
            k["planted"] += 1
            k["caught"] += p["key"] in keys
        out["planted"] = {"planted": len(planted),
                          "caught": sum(k["caught"] for k in kinds.values()),
                          "clean_dropped": len(keys - {p["key"] for p in planted}),
                          "by_kind": kinds}
    return out


def _decontam_lines(d: dict) -> list[str]:
    if d["method"] == "none":
        return ["", "Decontamination: **off** (decontam.method: none): training data was not "
                "checked against the evaluation images."]
    lines = ["", f"Decontamination ({d['method']}): {d['dropped']} of {d['checked']} corpus "
             "images dropped as near-copies of evaluation images; neither the control nor any "
             "MOFI candidate trained on them."]
    p = d.get("planted")
    if p:
        kinds = ", ".join(f"{k} {v['caught']}/{v['planted']}" for k, v in p["by_kind"].items())
        lines.append(f"Planted near-copies caught: {p['caught']}/{p['planted']} ({kinds}); "
                     f"clean images dropped with them: {p['clean_dropped']}.")
    return lines


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report_markdown(quality: dict, evaluation: dict) -> str:
    lines = ["# MOFI demo-world report", ""]
    if "raw_ner" in quality:
        lines += ["## Entity labels vs ground truth ((image, entity) pairs)", "",
                  "Recall counts every true pair; *filter recall* only those NER + linking "
                  "found (what the CLIP filter could keep: alt-texts naming nothing cap the "
                  "first).", "",
                  "| step | pairs | precision | recall | filter recall |", "|---|---|---|---|---|"]
        steps = [("NER + linking (all candidates)", quality["raw_ner"]),
                 ("after CLIP filter + min images (I2E)", quality["filtered"])]
        steps += [(f"rule `{name.replace('_and_', ' + ')}` (same candidates, same min images)", q)
                  for name, q in quality.get("rules", {}).items()]
        for title, q in steps:
            fr = _pct(q["filter_recall"]) if "filter_recall" in q else "—"
            lines.append(f"| {title} | {q['pairs']} | {_pct(q['precision'])} | "
                         f"{_pct(q['recall'])} | {fr} |")
        link = quality.get("linking")
        if link:
            lines += ["", f"Linking: {link['ambiguous_mentions']} ambiguous mentions with a right "
                      f"candidate; the top link score (type fit, co-mentions) picks a right one "
                      f"in {_pct(link['top_link_right'])}; all candidates go to CLIP."]
        f = quality["filtered"]
        met = f["precision"] >= GOAL_PRECISION and f["filter_recall"] >= GOAL_FILTER_RECALL
        lines += ["", f"Goal (precision >= {_pct(GOAL_PRECISION)} at filter recall >= "
                  f"{_pct(GOAL_FILTER_RECALL)}): **{'met' if met else 'not met'}** "
                  f"({_pct(f['precision'])} at {_pct(f['filter_recall'])})."]
        if "threshold_choice" in quality:
            lines += ["", _choice_line(quality["threshold_choice"])]
    if quality.get("decontam"):
        lines += _decontam_lines(quality["decontam"])
    lines += ["", "## Every model on the benchmark (GPR1200 protocol)", "",
              "| model | mAP all | seen classes | unseen classes | R@1 | zero-shot top-1 | "
              "linear probe top-1 |", "|---|---|---|---|---|---|---|"]
    for name, m in model_rows(evaluation).items():
        cells = [m.get(k) for k in ("gpr_map", "gpr_map_seen", "gpr_map_unseen", "recall_at_1",
                                    "zero_shot_top1", "probe_top1")]
        lines.append(f"| {model_label(name)} | " + " | ".join(
            "n/a" if v is None else f"{v:.4f}" for v in cells) + " |")
    lines += ["", "## Does the paper's direction hold? (this run: one seed)", ""]
    if "raw_ner" in quality:
        ok = quality["filtered"]["precision"] > quality["raw_ner"]["precision"]
        lines.append(f"- {FILTER_CLAIM}: **{'held' if ok else 'not held'}** "
                     f"({_pct(quality['filtered']['precision'])} vs "
                     f"{_pct(quality['raw_ner']['precision'])})")
    lines += [f"- {c.text}: **{'held' if ok else 'not held'}** ({c.metric} {a:.4f} vs {b:.4f})"
              for c, a, b, ok in verdicts(evaluation)]
    return "\n".join(lines) + "\n"


FILTER_CLAIM = "filtering raises label precision"


def paper_direction(quality: dict, evaluation: dict) -> list[tuple[str, bool]]:
    """``(claim key, held)`` for every claim this run can check."""
    out = []
    if "raw_ner" in quality:
        out.append(("filtering_raises_precision",
                    quality["filtered"]["precision"] > quality["raw_ner"]["precision"]))
    out += [(c.key, ok) for c, _, _, ok in verdicts(evaluation)]
    return out


def run(cfg: ReportConfig, ctx: StageContext) -> dict:
    """Stage ``report``: writes ``reports/quality.md`` and returns the flat numbers."""
    lay = ctx.layout
    evaluation = lay.read_metrics("evaluate")
    quality = {}
    from mofi_core.curate.decontam import DROPPED, DROPPED_SCHEMA

    dropped = tables.read_table(lay.decontam / DROPPED, DROPPED_SCHEMA)
    manifest = tables.read_table(lay.ingest / "manifest.parquet", tables.MANIFEST)
    if lay.truth.is_dir():
        # only keys that reach curation count: not ingest's rejects, not decontam's drops
        truth = read_truth(lay.truth)
        kept_keys = set(manifest["key"].to_pylist()) - set(dropped["key"].to_pylist())
        quality = label_quality(truth, kept_keys, pq.read_table(lay.ner / "mentions.parquet"),
                                pq.read_table(lay.i2e / "labels.parquet"))
        rule = json.loads((lay.i2e / "stats.json").read_text(encoding="utf-8"))["rule"]
        quality["rules"] = rule_variants(rule, lay.score, truth_pairs(truth, kept_keys))
        quality["threshold_choice"] = threshold_choice(rule, ctx.params.corpus.seed)
    # what decontam checked: every ingested image, with the method its params name (a DVC
    # input of this stage is its list, not its metrics file)
    quality["decontam"] = decontam_quality(
        dropped, {"method": ctx.params.decontam.method, "checked": manifest.num_rows},
        lay.truth)
    markdown = report_markdown(quality, evaluation)
    write_bytes(lay.reports / "quality.md", markdown.encode("utf-8"))
    ctx.artifacts.append(lay.reports / "quality.md")
    verdict = dict(paper_direction(quality, evaluation))
    write_json(lay.reports / "quality.json", {"labels": quality, "paper_direction": verdict})
    failed = [key for key, ok in verdict.items() if not ok]
    if cfg.require_paper_direction and failed:
        raise PaperDirectionError(f"report.require_paper_direction: does not hold: {failed}; "
                             f"see {lay.reports / 'quality.md'}")
    return {"labels": quality, "paper_direction_holds": not failed}
