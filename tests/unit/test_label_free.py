"""The label-free precision estimate (decoy-calibrated mixture) and the build rule ``fdr``, on
synthetic scores whose truth is known: every image shows at most one of its candidates."""

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mofi_core.config.build import BuildConfig
from mofi_core.curate import fdr
from mofi_core.curate.build import build
from mofi_core.curate.rules import select_labels
from mofi_core.io import tables
from mofi_core.io.shards import ShardWriter
from tests.errors import names

# the rules on CLIP scores alone: these tests have no ner output (no link scores)
ClipOnly = partial(BuildConfig, link_weight=0.0)


def synthetic(seed=0, images=3000, pi_none=0.12, decoys_per_image=16):
    """Scores as the demo world makes them: a wrong candidate and a decoy are both 'an entity
    the image does not show' (one distribution); the depicted one scores higher."""
    rng = np.random.default_rng(seed)

    def wrong(n):
        return np.clip(rng.normal(0.28, 0.16, n), -1, 1)

    keys, ents, scores, truth, null = [], [], [], set(), {}
    for i in range(images):
        key = f"{i:09d}"
        c = int(rng.integers(1, 4))
        shown = None if rng.random() < pi_none else int(rng.integers(c))
        for j in range(c):
            ent = f"Q{rng.integers(10_000):05d}"
            s = float(np.clip(rng.normal(0.68, 0.1), -1, 1)) if j == shown else float(wrong(1)[0])
            keys.append(key), ents.append(ent), scores.append(s)
            if j == shown:
                truth.add((key, ent))
        null[key] = wrong(decoys_per_image)
    return keys, ents, scores, truth, null


def true_precision(cands, keep, truth):
    hits = [(cands.keys[i], cands.entities[i][j]) in truth for i, j in zip(*np.nonzero(keep))]
    return float(np.mean(hits))


@pytest.mark.parametrize("seed", [0, 1])
def test_estimate_tracks_the_true_precision_across_thresholds(seed):
    keys, ents, scores, truth, null = synthetic(seed)
    cands = fdr.Candidates.from_rows(keys, ents, scores)
    model = fdr.fit(cands, np.concatenate(list(null.values())))
    assert 0.08 < model.pi_none < 0.2  # drawn with 0.12; Storey's estimate leans high
    post = model.posteriors(cands)
    assert np.all(np.nansum(post, axis=1) <= 1 + 1e-12)  # at most one depicted per image
    cfg = ClipOnly(rules=("threshold", "top_k"))
    rank = fdr.ranks(cands)
    errors = []
    for t in np.arange(0.3, 0.81, 0.05):
        keep = fdr.per_image_keep(cands, cfg, t, rank)
        errors.append(post[keep].mean() - true_precision(cands, keep, truth))
    assert max(abs(e) for e in errors) < 0.03, np.round(errors, 3)


def test_without_the_storey_step_the_fit_would_drift():
    """The reason pi_none is not fitted by EM: a free depicted density absorbs null images."""
    keys, ents, scores, _, null = synthetic(2)
    cands = fdr.Candidates.from_rows(keys, ents, scores)
    p = fdr.image_pvalues(cands, np.concatenate(list(null.values())))
    assert p.min() >= 0 and p.max() <= 1
    pi, lam = fdr.storey_pi_none(p)
    assert lam in fdr.LAMBDAS and pi == pytest.approx(
        min(1.0, (p > lam).mean() / (1 - lam)))
    assert fdr.storey_pi_none(p) == (pi, lam)  # seeded bootstrap: the same every time
    uniform = np.random.default_rng(0).random(20_000)  # all null: pi_none about 1
    assert fdr.storey_pi_none(uniform)[0] == pytest.approx(1.0, abs=0.05)


def test_choose_threshold_is_the_q_value_cut():
    pts = [{"threshold": 0.1, "estimated_precision": 0.90},
           {"threshold": 0.2, "estimated_precision": 0.96},  # then a dip at 0.3
           {"threshold": 0.3, "estimated_precision": 0.94},
           {"threshold": 0.4, "estimated_precision": 0.97},
           {"threshold": 0.5, "estimated_precision": None}]
    # the lowest threshold meeting the target; the dip at 0.3 does not move it up
    assert fdr.choose_threshold(pts, 0.05)["threshold"] == 0.2
    assert fdr.choose_threshold(pts, 0.035)["threshold"] == 0.4
    assert fdr.choose_threshold(pts, 0.10)["threshold"] == 0.1  # exactly at the target
    with pytest.raises(fdr.LabelFreeError, match=r"best estimated precision 0\.970 at "
                                                 r"threshold 0\.40"):
        fdr.choose_threshold(pts, 0.01)


def test_rules_fdr_and_threshold_exclude_each_other():
    with pytest.raises(ValueError, match="both threshold and fdr"):
        ClipOnly(rules=("threshold", "fdr"))
    with pytest.raises(ValueError, match="must be resolved to a threshold"):
        select_labels(["a"], ["X"], [0.9], ClipOnly(rules=("fdr",), min_images_per_entity=1))


def _write(tmp_path, keys, ents, scores, null, with_null=True):
    rows = [{"key": k, "entity_id": e, "score": s} for k, e, s in zip(keys, ents, scores)]
    with ShardWriter(tmp_path / "ingest" / "shards" / "00000.tar") as w:
        for k in sorted(set(keys)):
            w.write(k, {"jpg": b"x", "txt": "t"})
    tables.write_table(tmp_path / "score" / "parts" / "00000.scores.parquet",
                       pa.Table.from_pylist(rows), tables.SCORES)
    if with_null:
        tables.write_table(tmp_path / "score" / "parts" / "00000.null.parquet",
                           pa.table({"key": list(null), "scores": [v.tolist() for v in
                                                                   null.values()]}),
                           tables.NULL_SCORES)


def test_build_rule_fdr_picks_its_threshold_and_reports_the_estimate(tmp_path):
    keys, ents, scores, truth, null = synthetic(3, images=1500)
    _write(tmp_path, keys, ents, scores, null)
    cfg = ClipOnly(rules=("fdr", "top_k"), target_fdr=0.05, min_images_per_entity=1)
    stats = build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e", cfg)
    import json

    free = json.loads((tmp_path / "i2e" / "label_free.json").read_text())
    rule = json.loads((tmp_path / "i2e" / "stats.json").read_text())["rule"]
    chosen = free["chosen"]["threshold"]
    assert rule["rules"] == ["threshold", "top_k"] and rule["threshold"] == chosen
    assert rule["threshold_source"] == "fdr" and rule["calibration_seed"] is None
    # the lowest threshold of the curve that meets the target: none below it does
    below = [p for p in free["curve"] if p["threshold"] < chosen
             and p["estimated_precision"] is not None]
    assert below and all(1 - p["estimated_precision"] > 0.05 for p in below)
    labels = pq.read_table(tmp_path / "i2e" / "labels.parquet").to_pylist()
    assert min(s for r in labels for s in r["scores"]) >= chosen - 1e-6
    kept = {(r["key"], e) for r in labels for e in r["entity_ids"]}
    assert stats["estimated_precision"] == pytest.approx(free["estimated_precision"])
    assert abs(stats["estimated_precision"] - len(kept & truth) / len(kept)) < 0.03
    assert len(kept & truth) / len(kept) >= 0.93  # the target met on the truth, too


def test_build_without_decoys(tmp_path):
    keys, ents, scores, _, null = synthetic(4, images=200)
    _write(tmp_path, keys, ents, scores, null, with_null=False)
    with pytest.raises(fdr.LabelFreeError, match=r"score\.null_samples > 0"):
        build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e",
              ClipOnly(rules=("fdr", "top_k"), min_images_per_entity=1))
    stats = build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e",
                  ClipOnly(threshold=0.5, min_images_per_entity=1))
    assert "estimated_precision" not in stats  # nothing to estimate from: left out, said
    import json

    free = json.loads((tmp_path / "i2e" / "label_free.json").read_text())
    assert free == {"available": False, "reason": free["reason"]}
    assert "score.null_samples > 0" in free["reason"]


def test_report_sets_the_estimate_beside_the_truth(tmp_path):
    import json

    from mofi_core.report import _label_free_lines, label_free_plot, label_free_quality

    keys, ents, scores, truth, null = synthetic(5, images=1500)
    _write(tmp_path, keys, ents, scores, null)
    build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e",
          ClipOnly(rules=("fdr", "top_k"), target_fdr=0.05, min_images_per_entity=1))
    free = json.loads((tmp_path / "i2e" / "label_free.json").read_text())
    rule = json.loads((tmp_path / "i2e" / "stats.json").read_text())["rule"]
    q = label_free_quality(free, tmp_path / "score", frozenset(), truth, rule)
    useful = q["useful_range"]
    assert useful["thresholds"] >= 10 and useful["max_abs_error"] < 0.03
    chosen = q["chosen"]
    at = next(p for p in q["curve"] if p["threshold"] == chosen["threshold"])
    assert chosen["true_precision"] == at["true_precision"] >= 0.93
    # the truth at the lowest threshold: every top-1 candidate kept
    low = q["curve"][0]
    top1 = {}
    for k, e, s in zip(keys, ents, scores, strict=True):
        if k not in top1 or (-s, e) < (-top1[k][1], top1[k][0]):
            top1[k] = (e, s)
    kept = {(k, e) for k, (e, s) in top1.items() if s >= low["threshold"]}
    assert low["true_precision"] == pytest.approx(len(kept & truth) / len(kept))
    assert low["filter_recall"] == pytest.approx(len(kept & truth) / len(truth))
    text = "\n".join(_label_free_lines(q))
    assert "Rule `fdr` at target 0.05" in text and "points" in text
    label_free_plot(q, tmp_path / "lf.png")
    assert (tmp_path / "lf.png").stat().st_size > 5000
    # a corpus without truth: the estimate alone; without decoys: said, and still a plot
    alone = label_free_quality(free, tmp_path / "score", frozenset(), None, rule)
    assert "true_precision" not in alone["curve"][0] and "useful_range" not in alone
    none = label_free_quality({"available": False, "reason": "no decoys"}, tmp_path, frozenset(),
                              None, rule)
    assert "Not estimated: no decoys" in "\n".join(_label_free_lines(none))
    label_free_plot(none, tmp_path / "none.png")
    assert (tmp_path / "none.png").is_file()


def test_the_fitted_sample_is_a_fixed_share_of_keys_by_their_crc32():
    import zlib

    keys = [f"{i:09d}" for i in range(2000)]
    assert all(fdr.in_sample(k, 1.0) for k in keys)
    assert not any(fdr.in_sample(k, 0.0) for k in keys)
    half = [k for k in keys if fdr.in_sample(k, 0.5)]
    assert half == [k for k in keys if zlib.crc32(k.encode()) < 2**31]
    assert 900 < len(half) < 1100
    # the cut is strict: a key whose hash is exactly at it stays out
    at = zlib.crc32(keys[7].encode()) / 2**32
    assert not fdr.in_sample(keys[7], at) and fdr.in_sample(keys[7], at + 2**-40)


def test_fit_names_what_is_missing_and_fits_a_single_image():
    one = fdr.Candidates.from_rows(["a"], ["Q1"], [0.5])
    with pytest.raises(fdr.LabelFreeError) as err:
        fdr.fit(one, np.array([np.nan]))
    names(err.value, "no decoy scores", "score.null_samples")
    with pytest.raises(fdr.LabelFreeError) as err:
        fdr.fit(fdr.Candidates.from_rows([], [], []), np.array([0.1]))
    names(err.value, "no scored candidates")
    model = fdr.fit(one, np.array([0.1, 0.2, 0.3]))
    assert (model.images, model.decoys) == (1, 3)


def test_fit_counts_its_em_steps_and_records_storeys_lambda():
    keys, ents, scores, _, null = synthetic(seed=3, images=400)
    cands = fdr.Candidates.from_rows(keys, ents, scores)
    decoys = np.concatenate(list(null.values()))
    one = fdr.fit(cands, decoys, max_iter=1)
    assert one.iterations == 1 and not np.allclose(one.depicted, one.null)  # one EM step taken
    three = fdr.fit(cands, decoys, max_iter=3)
    assert three.iterations == 3 and not np.allclose(three.depicted, one.depicted)
    done = fdr.fit(cands, decoys)
    assert 3 < done.iterations < 2000  # converged (step under tol) before max_iter
    pi_none, lam = fdr.storey_pi_none(fdr.image_pvalues(cands, decoys))
    assert (done.pi_none, done.storey_lambda) == (pi_none, lam)


def test_choose_threshold_says_what_it_found_when_nothing_reaches_the_target():
    pts = [{"threshold": 0.3, "estimated_precision": 0.9},
           {"threshold": 0.4, "estimated_precision": 0.97}]
    with pytest.raises(fdr.LabelFreeError) as err:
        fdr.choose_threshold(pts, 0.01)
    names(err.value, "build.target_fdr 0.01", "0.970", "0.40")
    with pytest.raises(fdr.LabelFreeError) as err:
        fdr.choose_threshold([{"threshold": 0.5, "estimated_precision": None}], 0.05)
    assert "0.970" not in names(err.value, "build.target_fdr 0.05", "no threshold keeps")


def test_labels_outside_the_fitted_sample_have_no_precision():
    labels = pa.table({"key": ["a"], "entity_ids": [["Q1"]]})
    assert fdr.labels_precision(labels, {("b", "Q1"): 0.9}) is None
    assert fdr.labels_precision(labels, {("a", "Q1"): 0.25, ("b", "Q1"): 0.9}) == 0.25


def test_read_candidates_leaves_out_excluded_and_unsampled_images_and_empty_decoy_rows(tmp_path):
    import zlib

    keys = [f"{i:09d}" for i in range(12)]
    null = {k: np.array([0.1 * i, -0.1 * i]) for i, k in enumerate(keys)}
    null[keys[3]] = np.zeros(0)  # an image scored against no decoy
    _write(tmp_path, keys, ["Q1"] * 12, [0.5] * 12, null)
    with pytest.raises(FileNotFoundError) as err:
        fdr.read_candidates(tmp_path / "nothing")
    names(err.value, str(tmp_path / "nothing" / "parts"), "run score")
    drop = frozenset({keys[1], keys[2]})
    kept = [k for k in keys if k not in drop and zlib.crc32(k.encode()) < 0.5 * 2**32]
    assert 2 < len(kept) < 10
    cands, decoys = fdr.read_candidates(tmp_path / "score", drop, 0.5)
    assert cands.keys == kept
    want = [v for k in kept for v in null[k].tolist()]
    assert len(decoys) == len(want)
    np.testing.assert_allclose(decoys, want, rtol=1e-6)  # stored as float32
    every, all_decoys = fdr.read_candidates(tmp_path / "score")
    assert every.keys == keys and len(all_decoys) == 22


def test_the_fits_summary_holds_its_numbers():
    keys, ents, scores, _, null = synthetic(seed=4, images=300)
    model = fdr.fit(fdr.Candidates.from_rows(keys, ents, scores),
                    np.concatenate(list(null.values())), bins=20)
    assert model.summary() == {"pi_none": round(model.pi_none, 6),
                               "storey_lambda": model.storey_lambda,
                               "iterations": model.iterations, "images": 300,
                               "decoys": 300 * 16, "bins": 20}
    assert round(model.pi_none, 6) != round(model.pi_none, 7)  # the rounding shows


def test_a_score_at_the_threshold_is_kept_and_top_k_ranks_within_the_image():
    cands = fdr.Candidates.from_rows(["a", "a", "b"], ["Q1", "Q2", "Q3"], [0.5, 0.7, 0.5])
    cfg = ClipOnly(rules=("threshold", "top_k"), top_k=1)
    keep = fdr.per_image_keep(cands, cfg, 0.5)
    assert keep.tolist() == [[False, True], [True, False]]  # b's 0.5 at 0.5 stays; a keeps 0.7
    rows = fdr.curve(cands, np.array([[0.2, 0.9], [0.6, np.nan]]), cfg, thresholds=[0.5, 0.6])
    assert [(r["threshold"], r["labels"], r["images"]) for r in rows] == [(0.5, 2, 2),
                                                                         (0.6, 1, 1)]


def test_build_says_what_it_estimated_and_only_rule_fdr_fails_on_an_unreachable_target(
        tmp_path, capsys):
    import json

    keys, ents, scores, _, null = synthetic(6, images=600)
    _write(tmp_path, keys, ents, scores, null)
    excluded = frozenset(sorted(set(keys))[:100])  # decontam's near-copies
    plain = ClipOnly(rules=("threshold", "top_k"), threshold=0.5, target_fdr=0.001,
                        fdr_sample=0.5, min_images_per_entity=1)
    build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e", plain, exclude=excluded)
    free = json.loads((tmp_path / "i2e" / "label_free.json").read_text())
    model = free["model"]
    assert free["chosen"] is None and free["target_fdr"] == 0.001 and free["sample"] == 0.5
    assert model["images"] < 500 * 0.6  # half of the 500 images not excluded, drawn by key
    with pytest.raises(fdr.LabelFreeError) as unreachable:
        fdr.choose_threshold(free["curve"], 0.001)
    said = (f"build: label-free estimate from {model['decoys']} decoy scores of "
            f"{model['images']} images: {100 * model['pi_none']:.1f}% of images show none "
            "of their candidates")
    # rule threshold: the unreachable target is a note, and the build goes on
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"build: label-free estimate: {unreachable.value}", said]
    # rule fdr: the same target is the build's error
    with pytest.raises(fdr.LabelFreeError) as err:
        build(tmp_path / "ingest", tmp_path / "score", tmp_path / "fdr",
              plain.model_copy(update={"rules": ("fdr", "top_k")}), exclude=excluded)
    assert str(err.value) == str(unreachable.value)
    capsys.readouterr()
    build(tmp_path / "ingest", tmp_path / "score", tmp_path / "fdr",
          plain.model_copy(update={"rules": ("fdr", "top_k"), "target_fdr": 0.2}),
          exclude=excluded)
    chosen = json.loads((tmp_path / "fdr" / "label_free.json").read_text())["chosen"]
    assert capsys.readouterr().out.splitlines()[0] == \
        f"{said}; estimated FDR <= 0.2 from threshold {chosen['threshold']:.2f}"


def test_an_empty_dataset_is_refused_naming_every_rule_parameter(tmp_path):
    from mofi_core.curate.build import EmptyDatasetError

    keys, ents, scores, _, null = synthetic(7, images=50)
    _write(tmp_path, keys, ents, scores, null)
    cfg = ClipOnly(rules=("threshold", "top_k"), threshold=0.99, min_images_per_entity=3)
    with pytest.raises(EmptyDatasetError) as err:
        build(tmp_path / "ingest", tmp_path / "score", tmp_path / "i2e", cfg)
    names(err.value, "build.rules=['threshold', 'top_k']", "threshold=0.99", "top_k=1",
          "null_quantile=0.95", "build.min_images_per_entity=3", str(tmp_path / "score"))
