"""report: does the demo world show the paper's effects? Label quality against the ground truth
at each curation step, and retrieval of the trained encoder against the CLIP control.

This is the only stage that reads ``data/truth``, and only when the ingested corpus is the demo
world that truth belongs to (``demo_truth``: the same ``world.json`` in both). On any other corpus
the stage reports the label-free precision estimate and retrieval.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from mofi_core.claims import model_rows, verdicts
from mofi_core.config.report import ReportConfig
from mofi_core.io import tables
from mofi_core.io.atomic import write_bytes, write_json
from mofi_core.recipes import model_label

if TYPE_CHECKING:
    from mofi_core.context import StageContext

Pairs = set[tuple[str, str]]


class PaperDirectionError(RuntimeError):
    """The demo world no longer shows the paper's effects (report.require_paper_direction)."""


class TruthMismatchError(RuntimeError):
    """``data/truth`` and the ingested demo corpus are not the same world."""


def demo_truth(lay, ingest_input: str) -> tuple[Path | None, str]:
    """``(data/truth or None, why)``: the demo world's truth counts only for the corpus it was
    generated with -- ``ingest.input`` is the demo's shard folder and both folders carry the
    same ``world.json``. Another input gets no truth (said); the demo folder with a missing or
    different identity is an error, never a silent score."""
    from mofi_core.demo.world import WORLD_FILE

    if not lay.truth.is_dir():
        return None, "no ground truth (only the demo world has one)"
    marker = lay.truth / WORLD_FILE
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("source") \
            == "none":
        return None, "no ground truth: corpus.source is none (your own corpus)"
    src = lay.under_root(ingest_input)
    if "://" in ingest_input or src.resolve() != lay.corpus_shards.resolve():
        return None, (f"{lay.truth} belongs to the demo world; this run ingested "
                      f"{ingest_input}, so its labels are not scored against it")
    ids = {}
    for name, folder in (("truth", lay.truth), ("corpus", lay.corpus)):
        f = folder / WORLD_FILE
        ids[name] = json.loads(f.read_text(encoding="utf-8")).get("world") \
            if f.is_file() else None
    if ids["truth"] is None or ids["truth"] != ids["corpus"]:
        raise TruthMismatchError(
            f"{lay.truth} (world {ids['truth']}) is not the truth of the corpus in "
            f"{lay.corpus} (world {ids['corpus']}): regenerate both with the corpus stage "
            f"(dvc repro corpus), or remove {lay.truth} if the shards are not the demo's")
    return lay.truth, f"the demo world {ids['truth']}"


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


# metric-name keys (MLflow takes letters, digits, _-. / and spaces): the report's row labels
EVIDENCE_ROWS = {"prior": {"prior": 1.0}, "type": {"type": 1.0}, "context": {"context": 1.0}}
EVIDENCE_LABELS = {"prior": "popularity alone", "type": "type fit alone",
                   "context": "context words alone", "ranking": "the ranking (ner.link_weights)"}
EVIDENCE_SAMPLE = 20_000  # ambiguous mentions measured at most (a fixed sample, by key hash)


def linking_evidence(mentions: pa.Table, texts: dict[str, str], kb, true: Pairs,
                     weights: dict[str, float], max_candidates: int) -> dict[str, dict]:
    """Each kind of linking evidence alone, and the configured ranking, on the ambiguous
    mentions whose candidates (all of them, before the cut) hold a right one: how often the
    best ranked is right (``top1``; a tie of k at the top counts 1/k) and how often a right one
    is among those sent on to CLIP (``recall_at_cut``)."""
    import zlib

    from mofi_core.curate.linking import rank, words
    from mofi_core.curate.ner import CandidateLookup

    candidates = CandidateLookup(kb)
    rows = mentions.select(["key", "start", "end", "mention", "label", "entity_id"]).to_pylist()
    by_key: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if not by_key[r["key"]] or by_key[r["key"]][-1]["start"] != r["start"]:
            by_key[r["key"]].append(r)
    variants = {**EVIDENCE_ROWS, "ranking": weights}
    hits = {name: [0.0, 0] for name in variants}
    measured = 0
    for key in sorted(by_key, key=lambda k: zlib.crc32(k.encode())):
        text = texts.get(key, "")
        spans = [(m, candidates(m["mention"])) for m in by_key[key]]
        sure = {c[0].entity_id for _, c in spans if len(c) == 1}
        for m, cands in spans:
            right = {c.entity_id for c in cands if (key, c.entity_id) in true}
            if len(cands) < 2 or not right:
                continue
            context = words(text) - words(m["mention"])
            for name, w in variants.items():
                ranked = rank(cands, m["label"], sure, context, w, len(cands))
                best = ranked[0][1]
                top = [e for e, sc in ranked if sc == best]
                hits[name][0] += len(right & set(top)) / len(top)
                kept = rank(cands, m["label"], sure, context, w, max_candidates)
                hits[name][1] += bool(right & {e for e, _ in kept})
            measured += 1
            if measured >= EVIDENCE_SAMPLE:
                break
        if measured >= EVIDENCE_SAMPLE:
            break
    return {name: {"mentions": measured, "top1": h[0] / measured if measured else 0.0,
                   "recall_at_cut": h[1] / measured if measured else 0.0}
            for name, h in hits.items()}


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


def rule_variants(rule: dict, score_dir: Path, truth_pairs: Pairs,
                  ner_dir: Path | None = None) -> dict[str, dict]:
    """Label quality of each filter rule alone (with build's settings) and of the applied
    combination, from the kept scores: what each rule buys, on the same candidates.
    ``ner_dir``: ner's output, for ``top_k``'s link scores when build used them."""
    from mofi_core.config.build import BuildConfig
    from mofi_core.curate.rules import link_scores, link_values, null_cutoffs, select_labels

    scores = tables.read_table(score_dir / "scores.parquet", tables.SCORES)
    cols = (scores["key"].to_pylist(), scores["entity_id"].to_pylist(),
            scores["score"].to_pylist())
    base = {k: v for k, v in rule.items() if k in BuildConfig.model_fields and k != "rules"}
    base.setdefault("link_weight", 0.0)  # a build from before link_weight ranked by CLIP alone
    links = link_values(cols[0], cols[1], link_scores([ner_dir / "mentions.parquet"])) \
        if base.get("link_weight") and ner_dir is not None else None
    reachable = {(k, e) for k, e in zip(cols[0], cols[1], strict=True)} & truth_pairs
    has_null = (score_dir / "null.parquet").is_file()
    out = {}
    for rules in (("threshold",), ("top_k",), ("null_quantile",), tuple(rule["rules"])):
        if "null_quantile" in rules and not has_null:
            continue
        cfg = BuildConfig(**base, rules=rules)
        cut = null_cutoffs(score_dir / "null.parquet", cfg.null_quantile) \
            if "null_quantile" in rules else None
        kept = {(k, e) for k, ls in select_labels(*cols, cfg, cut, links).items() for e, _ in ls}
        # the key becomes an MLflow metric name: letters, digits, _ - . / and spaces only
        out["_and_".join(rules)] = precision_recall(kept, truth_pairs, reachable)
    return out


USEFUL_IMAGE_SHARE = (0.2, 0.95)  # thresholds keeping 20-95 % of the images with candidates


def label_free_quality(label_free: dict, score_dir: Path, dropped: frozenset[str],
                       true: Pairs | None, rule: dict, ner_dir: Path | None = None) -> dict:
    """The label-free estimate as build made it; with the world's truth, each threshold's true
    precision and filter recall beside it (same candidates, same per-image rules), the error
    over the useful range (thresholds keeping 20-95 % of the images with candidates: chosen
    without truth) and what rule ``fdr`` at ``target_fdr`` gives on the truth."""
    if not label_free.get("available"):
        return {"available": False, "reason": label_free.get("reason", "")}
    out = {"available": True, "model": label_free["model"],
           "estimated_precision": label_free.get("estimated_precision"),
           "target_fdr": label_free["target_fdr"], "chosen": label_free["chosen"],
           "curve": [dict(p) for p in label_free["curve"]]}
    if true is None:
        return out
    import numpy as np

    from mofi_core.config.build import BuildConfig
    from mofi_core.curate import fdr

    cfg = BuildConfig(**{"link_weight": 0.0,  # a build from before link_weight: CLIP alone
                         **{k: v for k, v in rule.items() if k in BuildConfig.model_fields}})
    cands, _ = fdr.read_candidates(score_dir, dropped, label_free.get("sample", 1.0), ner_dir,
                                   cfg.link_weight)
    hit = np.zeros(cands.scores.shape, dtype=bool)
    for i, (k, ents) in enumerate(zip(cands.keys, cands.entities, strict=True)):
        hit[i, :len(ents)] = [(k, e) in true for e in ents]
    reachable = max(int(hit.sum()), 1)
    rank = fdr.ranks(cands)
    errors = []
    for p in out["curve"]:
        keep = fdr.per_image_keep(cands, cfg, p["threshold"], rank)
        n = int(keep.sum())
        p["true_precision"] = float(hit[keep].mean()) if n else None
        p["filter_recall"] = float(hit[keep].sum() / reachable)
        lo, hi = USEFUL_IMAGE_SHARE
        if n and p["estimated_precision"] is not None and lo <= p["image_share"] <= hi:
            errors.append(p["estimated_precision"] - p["true_precision"])
    if errors:
        out["useful_range"] = {"thresholds": len(errors),
                               "max_abs_error": float(np.max(np.abs(errors))),
                               "mean_error": float(np.mean(errors))}
    if out["chosen"] is not None:
        at = next(p for p in out["curve"] if p["threshold"] == out["chosen"]["threshold"])
        out["chosen"] = {**out["chosen"], "true_precision": at["true_precision"],
                         "filter_recall": at["filter_recall"]}
    return out


def _label_free_lines(q: dict) -> list[str]:
    lines = ["", "## Label precision without ground truth (decoy estimate)", ""]
    if not q.get("available"):
        return [*lines, f"Not estimated: {q.get('reason', '')}"]
    m = q["model"]
    lines.append(f"Each image's candidates are scored beside {m['decoys'] // max(m['images'], 1)}"
                 f" random entities it never named (decoys, the null); an image shows at most "
                 f"one candidate. Storey's rule (lambda {m['storey_lambda']}) puts "
                 f"{_pct(m['pi_none'])} of the {m['images']} images at none shown; EM fits the "
                 "rest (mofi_core/curate/fdr.py).")
    est = q.get("estimated_precision")
    if est is not None:
        lines.append(f"- I2E labels: estimated precision **{_pct(est)}**"
                     + (f" (true {_pct(q['labels_true_precision'])})"
                        if "labels_true_precision" in q else "") + ".")
    r = q.get("useful_range")
    if r:
        lines.append(f"- Over the useful thresholds ({r['thresholds']} thresholds keeping "
                     f"{int(100 * USEFUL_IMAGE_SHARE[0])}-{int(100 * USEFUL_IMAGE_SHARE[1])}% "
                     f"of the images): largest |estimate - true| "
                     f"**{100 * r['max_abs_error']:.1f} points**, mean error "
                     f"{100 * r['mean_error']:+.1f} points (goal: within 3).")
    c = q.get("chosen")
    if c is None:
        lines.append(f"- No threshold reaches estimated FDR <= {q['target_fdr']}.")
    else:
        line = (f"- Rule `fdr` at target {q['target_fdr']}: threshold {c['threshold']:.2f}, "
                f"estimated precision {_pct(c['estimated_precision'])}")
        if c.get("true_precision") is not None:
            met = c["true_precision"] >= 0.93 and c["filter_recall"] >= 0.80
            line += (f"; on the truth {_pct(c['true_precision'])} at filter recall "
                     f"{_pct(c['filter_recall'])} (goal >= 93.0% at >= 80.0%: "
                     f"**{'met' if met else 'not met'}**)")
        lines.append(line + ".")
    lines.append("- Per threshold, estimated vs true: `reports/quality.json` (labels.label_free)"
                 " and `reports/label_free.png`.")
    return lines


def label_free_plot(q: dict, path: Path) -> None:
    """Estimated (and, on the demo, true) precision of the kept labels across thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    if q.get("available"):
        pts = [p for p in q["curve"] if p["estimated_precision"] is not None]
        t = [p["threshold"] for p in pts]
        ax.plot(t, [p["estimated_precision"] for p in pts], label="estimated (decoys, no truth)")
        if pts and "true_precision" in pts[0]:
            ax.plot(t, [p["true_precision"] for p in pts], label="true (demo world)")
            ax.plot(t, [p["filter_recall"] for p in pts], ":", label="filter recall (true)")
        if q.get("chosen"):
            ax.axvline(q["chosen"]["threshold"], color="grey", lw=0.8,
                       label=f"fdr rule, target {q['target_fdr']}")
        ax.set(xlabel="threshold (cosine)", ylabel="share", ylim=(0, 1.02),
               title="Kept labels: precision across thresholds")
        ax.legend(loc="lower left", fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no label-free estimate:\n{q.get('reason', '')}", ha="center",
                va="center", wrap=True)
        ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def threshold_choice(rule: dict, report_seed: int) -> dict:
    """Where the filter threshold came from, relative to the world the labels are scored on."""
    seed = rule.get("calibration_seed")
    kind = "by hand" if seed is None else ("in-sample" if seed == report_seed else "held out")
    return {"threshold": rule.get("threshold"), "calibration_seed": seed,
            "report_seed": report_seed, "kind": kind}


def _choice_line(choice: dict) -> str:
    t, seed, here = choice["threshold"], choice["calibration_seed"], choice["report_seed"]
    if choice["kind"] == "held out":
        return (f"Threshold {t}: chosen by `make calibrate` on world seed {seed}; the numbers "
                f"above are on world seed {here}, which did not choose it (**held out**).")
    if choice["kind"] == "in-sample":
        return (f"Threshold {t}: chosen on this world's own truth (seed {here}): the label "
                "numbers above are **in-sample**, not a result; run `make calibrate "
                "SEED=<another>`.")
    return (f"Threshold {t}: set by hand (build.calibration_seed is null); run `make calibrate "
            "SEED=<another seed>` to choose it on a held-out world.")


def decontam_quality(dropped: pa.Table, metrics: dict, truth_dir: Path | None) -> dict:
    """What decontam dropped and, where the demo world planted near-copies of evaluation images
    (``data/truth/planted.json``), how many of each kind it caught and how many clean images it
    dropped with them."""
    from mofi_core.demo.world import PLANTED

    keys = set(dropped["key"].to_pylist())
    out: dict = {"method": metrics.get("method"), "checked": metrics.get("checked", 0),
                 "dropped": len(keys)}
    planted_file = truth_dir / PLANTED if truth_dir is not None else None
    if planted_file is not None and planted_file.is_file():
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
    if "raw_ner" not in quality and quality.get("truth"):
        lines += [f"Label quality against ground truth: not scored ({quality['truth']}).", ""]
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
                      f"candidate among those sent to CLIP; the top link score picks a right one "
                      f"in {_pct(link['top_link_right'])}."]
        evidence = quality.get("linking_evidence")
        if evidence and next(iter(evidence.values()))["mentions"]:
            n = next(iter(evidence.values()))["mentions"]
            lines += ["", f"Linking evidence on {n} ambiguous mentions with a right candidate "
                      "(all their candidates, before the cut):", "",
                      "| ranked by | top-1 right | a right one sent to CLIP |", "|---|---|---|"]
            lines += [f"| {EVIDENCE_LABELS[name]} | {_pct(v['top1'])} | "
                      f"{_pct(v['recall_at_cut'])} |" for name, v in evidence.items()]
        f = quality["filtered"]
        met = f["precision"] >= GOAL_PRECISION and f["filter_recall"] >= GOAL_FILTER_RECALL
        lines += ["", f"Goal (precision >= {_pct(GOAL_PRECISION)} at filter recall >= "
                  f"{_pct(GOAL_FILTER_RECALL)}): **{'met' if met else 'not met'}** "
                  f"({_pct(f['precision'])} at {_pct(f['filter_recall'])})."]
        if "threshold_choice" in quality:
            lines += ["", _choice_line(quality["threshold_choice"])]
    if "label_free" in quality:
        lines += _label_free_lines(quality["label_free"])
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
    from mofi_core.curate.decontam import DROPPED, DROPPED_SCHEMA, curated_keys

    dropped = tables.read_table(lay.decontam / DROPPED, DROPPED_SCHEMA)
    manifest = tables.read_table(lay.ingest / "manifest.parquet", tables.MANIFEST)
    truth_dir, truth_note = demo_truth(lay, ctx.params.ingest.input)
    quality["truth"] = truth_note
    if truth_dir is not None:
        # only keys that reach curation count: not ingest's rejects, not decontam's drops
        truth = read_truth(truth_dir)
        kept_keys = curated_keys(lay.ingest, lay.decontam)
        quality = label_quality(truth, kept_keys, pq.read_table(lay.ner / "mentions.parquet"),
                                pq.read_table(lay.i2e / "labels.parquet"))
        rule = json.loads((lay.i2e / "stats.json").read_text(encoding="utf-8"))["rule"]
        true = truth_pairs(truth, kept_keys)
        quality["rules"] = rule_variants(rule, lay.score, true, lay.ner)
        from mofi_core.kb.store import KnowledgeBase

        ner = ctx.params.ner
        quality["linking_evidence"] = linking_evidence(
            pq.read_table(lay.ner / "mentions.parquet"),
            dict(zip(manifest["key"].to_pylist(), manifest["text"].to_pylist(), strict=True)),
            KnowledgeBase.open(lay.kb), true, ner.link_weights.model_dump(), ner.max_candidates)
        quality["threshold_choice"] = threshold_choice(rule, ctx.params.corpus.seed)
    else:
        true = None
        rule = json.loads((lay.i2e / "stats.json").read_text(encoding="utf-8"))["rule"]
    label_free = json.loads((lay.i2e / "label_free.json").read_text(encoding="utf-8"))
    quality["label_free"] = label_free_quality(label_free, lay.score,
                                               frozenset(dropped["key"].to_pylist()), true, rule,
                                               lay.ner)
    if true is not None and quality["label_free"].get("estimated_precision") is not None:
        quality["label_free"]["labels_true_precision"] = quality["filtered"]["precision"]
    label_free_plot(quality["label_free"], lay.reports / "label_free.png")
    ctx.artifacts.append(lay.reports / "label_free.png")
    # what decontam checked: every ingested image, with the method its params name (a DVC
    # input of this stage is its list, not its metrics file)
    quality["decontam"] = decontam_quality(
        dropped, {"method": ctx.params.decontam.method, "checked": manifest.num_rows},
        truth_dir)
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
