"""Each stage's function on the tiny world, chained the way dvc.yaml chains them."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from mofi_core.curate.build import build
from mofi_core.curate.ingest import ingest
from mofi_core.curate.ner import run_ner
from mofi_core.curate.score import score
from mofi_core.evaluate.run import evaluate
from mofi_core.io.shards import iter_samples
from mofi_core.train.run import train_model
from mofi_core.validate.suites import Inputs, ValidationFailed, validate
from tests.faults import write_fault_shards
from tests.html_scan import remote_loads


def _inputs(layout, i2e):
    return Inputs(i2e=i2e, kb=layout.kb, manifest=layout.ingest / "manifest.parquet",
                  mentions=layout.ner / "mentions.parquet", scores=layout.score / "scores.parquet")


@pytest.fixture(scope="module")
def chain(tiny_world, tmp_path_factory):
    """Every stage over the tiny world's shards with four broken shards mixed in."""
    layout, params, _ = tiny_world
    corpus = tmp_path_factory.mktemp("faulty_corpus")
    for shard in layout.corpus_shards.glob("*.tar"):
        (corpus / shard.name).symlink_to(shard)
    names = [e["name"] for e in pq.read_table(layout.kb_table, columns=["name"]).to_pylist()]
    plan = write_fault_shards(corpus, [f"{n} on a sunny day" for n in names], prefix="00001")
    # three of its shards are unreadable; each counts as a typical shard's samples, lost
    lenient = params.ingest.model_copy(update={"max_reject_fraction": 0.9})
    out = {"ingest": ingest(corpus, layout.ingest, lenient).metrics(), "faults": plan}
    out["ner"] = run_ner(layout.ingest, layout.kb, layout.ner, params.ner)
    out["baseline"] = train_model(layout.ingest, layout.baseline_model, params.baseline,
                                 lambda s, r: None)
    out["score"] = score(layout.ingest, layout.ner, layout.kb,
                         layout.baseline_model, layout.score, params.score, num_workers=0)
    out["build"] = build(layout.ingest, layout.score, layout.i2e, params.build,
                         ner_dir=layout.ner)
    out["validate"] = validate(_inputs(layout, layout.i2e), layout.reports / "validate.json",
                               params.validate_, layout.reports / "data_docs")
    out["train"] = train_model(layout.i2e, layout.model("supervised"),
                               params.train.model_copy(update={"recipe": "supervised"}),
                               lambda s, r: None)
    out["evaluate"] = evaluate({"supervised": layout.model("supervised"),
                   "baseline": layout.baseline_model},
                               layout.gpr, params.evaluate)
    return layout, params, out


def test_ingest_keeps_every_good_sample_among_broken_shards(chain):
    layout, params, out = chain
    c, plan = params.corpus, out["faults"]
    # the demo world's web noise includes images without alt-text: rejected as empty
    blank = sum(not s["txt"].strip() for shard in layout.corpus_shards.glob("*.tar")
                for s in iter_samples(shard))
    assert 0 < blank < 0.2 * c.num_entities * c.images_per_entity
    assert out["ingest"]["samples_kept"] == (c.num_entities * c.images_per_entity
                                             + c.planted_duplicates - blank + len(plan.kept))
    lost_shards = sum(key == "*" for key, _ in plan.rejected)  # counted apart, as estimates
    assert out["ingest"]["samples_rejected"] == blank + len(plan.rejected) - lost_shards
    assert out["ingest"]["shards_unreadable"] == lost_shards > 0
    assert out["ingest"]["samples_lost_estimate"] >= lost_shards
    kept = set(pq.read_table(layout.ingest / "manifest.parquet", columns=["key"])["key"]
               .to_pylist())
    assert {k for k, _ in plan.kept} <= kept


def test_good_samples_from_broken_shards_reach_the_i2e_dataset(chain):
    layout, _, out = chain
    labelled = set(pq.read_table(layout.i2e / "labels.parquet", columns=["key"])["key"]
                   .to_pylist())
    rescued = {k for k, _ in out["faults"].kept} & labelled
    assert len(rescued) >= len(out["faults"].kept) // 2, rescued


def test_ner_links_most_samples(chain):
    _, _, out = chain
    assert out["ner"]["samples_with_candidates"] > 0.5 * out["ner"]["samples"]


def test_scores_are_cosines_for_every_candidate(chain):
    layout, _, out = chain
    scores = pq.read_table(layout.score / "scores.parquet").to_pandas()
    mentions = pq.read_table(layout.ner / "mentions.parquet").to_pandas().dropna(
        subset=["entity_id"])
    assert set(zip(scores.key, scores.entity_id)) == set(zip(mentions.key, mentions.entity_id))
    assert scores.score.between(-1.0001, 1.0001).all()
    assert out["score"]["entities_embedded"] >= scores.entity_id.nunique()
    null = pq.read_table(layout.score / "null.parquet").to_pandas()
    assert set(null.key) == set(scores.key)
    cands = scores.groupby("key").entity_id.apply(set)
    # null entities are never the image's candidates; the tiny KB has 12 entities
    assert all(0 < len(s) <= 12 - len(cands[k]) for k, s in zip(null.key, null.scores))


def test_i2e_shards_match_labels_and_vocab(chain):
    layout, _, out = chain
    vocab = json.loads((layout.i2e / "vocab.json").read_text())["classes"]
    labels = pq.read_table(layout.i2e / "labels.parquet").to_pylist()
    samples = {s["__key__"]: json.loads(s["json"])
               for shard in (layout.i2e / "shards").glob("*.tar") for s in iter_samples(shard)}
    assert set(samples) == {r["key"] for r in labels}
    assert all(set(s["entity_ids"]) <= set(vocab) for s in samples.values())
    assert out["build"]["images"] == len(labels) and out["build"]["entities"] == len(vocab)


def test_validate_passes_with_data_docs_and_enough_expectations(chain):
    layout, _, out = chain
    v = out["validate"]
    assert v["success"] and v["failed"] == 0 and v["i2e_expectations"] >= 12
    assert set(v["per_batch"]) == {"manifest", "mentions", "scores", "images", "labels",
                                   "entities", "distribution"}
    index = layout.reports / "data_docs" / "index.html"
    html = index.read_text()
    assert all(f"{b}" in html for b in v["per_batch"])
    assert len(list((layout.reports / "data_docs" / "validations").rglob("*.html"))) == 7
    assert remote_loads(layout.reports / "data_docs") == []  # readable offline


def _corrupt(path, schema, change):
    import pyarrow as pa

    from mofi_core.io import tables as t
    rows = pq.read_table(path).to_pylist()
    change(rows)
    t.write_table(path, pa.Table.from_pylist(rows, schema=schema), schema)


def test_validate_fails_on_each_corrupted_boundary(chain, tmp_path):
    import shutil

    from mofi_core.io import tables as t

    layout, params, _ = chain
    for src in (layout.i2e, layout.ingest, layout.ner, layout.score):
        shutil.copytree(src, tmp_path / src.name, ignore=shutil.ignore_patterns("*.tar"))
    inputs = Inputs(i2e=tmp_path / "i2e", kb=layout.kb,
                    manifest=tmp_path / "ingest" / "manifest.parquet",
                    mentions=tmp_path / "ner" / "mentions.parquet",
                    scores=tmp_path / "score" / "scores.parquet")

    def label_faults(rows):
        rows[0]["entity_ids"], rows[0]["scores"] = ["Q999999"], [0.9]  # not in vocab nor KB
        rows.append(dict(rows[1]))  # duplicate key

    def mention_faults(rows):
        rows[0]["end"] = rows[0]["start"] - 1
        rows[1]["key"] = "never-ingested"

    def score_faults(rows):
        rows[0]["score"] = 3.5

    def manifest_faults(rows):
        rows[0]["sha256"] = "not-a-hash"

    _corrupt(inputs.i2e / "labels.parquet", t.LABELS, label_faults)
    _corrupt(inputs.mentions, t.MENTIONS, mention_faults)
    _corrupt(inputs.scores, t.SCORES, score_faults)
    _corrupt(inputs.manifest, t.MANIFEST, manifest_faults)
    with pytest.raises(ValidationFailed) as err:
        validate(inputs, tmp_path / "r.json", params.validate_, tmp_path / "docs")
    msg = str(err.value)
    for expected in ("[labels] expect_column_values_to_be_in_set",
                     "[images] expect_column_values_to_be_unique",
                     "[mentions] expect_column_pair_values_a_to_be_greater_than_b",
                     "[mentions] expect_column_values_to_be_in_set {'column': 'in_manifest'",
                     "[scores] expect_column_values_to_be_between",
                     "[manifest] expect_column_values_to_match_regex {'column': 'sha256'"):
        assert expected in msg, expected
    assert "Data Docs" in msg and (tmp_path / "docs" / "index.html").is_file()
    report = json.loads((tmp_path / "r.json").read_text())
    # the unknown label also fails the KB check, the pair uniqueness and the entity table
    # (a 1-image class, one class too many); the duplicate row fails image-key uniqueness
    assert report["summary"]["success"] is False and report["summary"]["failed"] == 10
    _corrupt(inputs.i2e / "labels.parquet", t.LABELS,  # two scores for one label
             lambda rows: rows[0].update(scores=[0.9, 0.8]))
    with pytest.raises(ValidationFailed, match="different number of entity_ids and scores"):
        validate(inputs, tmp_path / "r.json", params.validate_)


def test_warnings_are_reported_but_do_not_stop_the_gate(chain, tmp_path, capsys):
    layout, params, _ = chain
    strict = params.validate_.model_copy(update={"max_entity_share": 0.01, "data_docs": False})
    summary = validate(_inputs(layout, layout.i2e), tmp_path / "r.json", strict)
    assert summary["success"] and summary["warnings"] >= 1
    assert "WARNING (does not stop the pipeline)" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    warned = [r for r in report["results"] if not r["success"]]
    assert warned and all(r["severity"] == "warning" for r in warned)


def test_training_reduces_loss(chain):
    layout, params, _ = chain
    hist = train_model(layout.i2e, layout.root / "m2",
                            params.train.model_copy(update={"steps": 40, "log_every": 10}),
                            lambda s, r: None)
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_evaluate_compares_both_models_on_the_benchmark(chain):
    _, params, out = chain
    ev = out["evaluate"]
    c = params.corpus.benchmark
    assert ev["benchmark"]["classes"] == c.seen_classes + c.unseen_classes
    for name in ("supervised", "baseline"):
        assert 0 < ev[name]["gpr_map"] <= 1 and math.isfinite(ev[name]["gpr_map"])
    assert ev["supervised_vs_baseline"]["gpr_map"] == pytest.approx(
        ev["supervised"]["gpr_map"] / ev["baseline"]["gpr_map"])


def test_evaluate_with_zero_shot_probe_pictures_and_table(chain, tmp_path):
    from PIL import Image

    from mofi_core.evaluate.run import comparison_table, evaluate

    layout, params, _ = chain
    ev = evaluate({"supervised": layout.model("supervised"),
                   "baseline": layout.baseline_model}, layout.gpr,
                  params.evaluate, layout.benchmark / "classes.json",
                  layout.benchmark / "labelled", layout.kb, tmp_path / "fig")
    for name in ("supervised", "baseline"):
        assert {"gpr_map_seen", "gpr_map_unseen", "recall_at_5", "probe_top1"} <= set(ev[name])
    # the CLIP control has a text tower (zero-shot over entity names), the classifier has not
    assert 0 <= ev["baseline"]["zero_shot_top1"] <= ev["baseline"]["zero_shot_top5"] <= 1
    assert "zero_shot_top1" not in ev["supervised"]
    assert any("no text tower" in n for n in ev["notes"])
    pngs = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    assert pngs == ["pr_curves.png", "retrieval_grid_baseline.png",
                    "retrieval_grid_supervised.png", "tsne_baseline.png", "tsne_supervised.png"]
    assert Image.open(tmp_path / "fig" / "pr_curves.png").size[0] > 200
    table = comparison_table(ev)
    row = next(line for line in table.splitlines() if line.startswith("| zero_shot_top1 |"))
    assert row.split("|")[1:3] == [" zero_shot_top1 ", " n/a "]
    assert "| gpr_map |" in table and "supervised / baseline" in table


def test_model_folder_round_trip_without_pickle(chain):
    from safetensors import safe_open

    from mofi_core.serving.encoder import Encoder

    layout, _, _ = chain
    with safe_open(str(layout.model("supervised") / "model.safetensors"), "pt") as f:
        assert len(list(f.keys())) > 0
    files = sorted(layout.gpr.glob("*.jpg"))[:3]
    from PIL import Image

    emb = Encoder(layout.model("supervised")).embed([Image.open(f).convert("RGB") for f in files])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    again = Encoder(layout.model("supervised")).embed([Image.open(f).convert("RGB") for f in files])
    np.testing.assert_array_equal(emb, again)


def test_quality_report_reads_truth_and_the_world_is_noisy(chain):
    from mofi_core.report import label_quality, read_truth, report_markdown

    layout, _, out = chain
    manifest = pq.read_table(layout.ingest / "manifest.parquet")
    quality = label_quality(read_truth(layout.truth), set(manifest["key"].to_pylist()),
                            pq.read_table(layout.ner / "mentions.parquet"),
                            pq.read_table(layout.i2e / "labels.parquet"))
    # default noise makes raw NER labels clearly noisy, yet useful
    assert 0.4 < quality["raw_ner"]["precision"] < 0.85
    assert quality["raw_ner"]["recall"] > 0.5
    from mofi_core.curate.rules import rule_summary
    from mofi_core.report import rule_variants, truth_pairs

    params = chain[1]
    quality["rules"] = rule_variants(rule_summary(params.build), layout.score,
                                     truth_pairs(read_truth(layout.truth),
                                                 set(manifest["key"].to_pylist())), layout.ner)
    assert set(quality["rules"]) == {"threshold", "top_k", "null_quantile", "threshold_and_top_k"}
    # top-1 keeps at most one label per image
    assert quality["rules"]["top_k"]["pairs"] <= out["score"]["images_scored"]
    md = report_markdown(quality, out["evaluate"])
    assert "rule `top_k`" in md
    assert "| NER + linking (all candidates) |" in md and "seen classes" in md
    assert "filtering raises label precision" in md


def test_ner_in_one_or_two_processes_and_resumed_gives_the_same_mentions(chain, tmp_path,
                                                                          monkeypatch):
    import mofi_core.curate.ner as ner

    layout, params, out = chain  # the chain ran ner with ner.workers=0: one process per core
    one = params.ner.model_copy(update={"workers": 1})
    state = tmp_path / "state"
    assert run_ner(layout.ingest, layout.kb, tmp_path / "ner", one, state_dir=state) == out["ner"]
    assert (tmp_path / "ner" / "mentions.parquet").read_bytes() == \
        (layout.ner / "mentions.parquet").read_bytes()

    def must_not_run(*a, **k):
        raise AssertionError("a finished shard was redone")

    monkeypatch.setattr(ner, "ner_shard", must_not_run)
    assert run_ner(layout.ingest, layout.kb, tmp_path / "ner", one, state_dir=state) == out["ner"]


def test_score_resumes_finished_shards(chain, tmp_path, monkeypatch):
    import mofi_core.curate.score as sc

    layout, params, out = chain
    state = tmp_path / "state"
    first = score(layout.ingest, layout.ner, layout.kb, layout.baseline_model, tmp_path / "s",
                  params.score, num_workers=0, state_dir=state)
    assert first == out["score"]
    digest = (tmp_path / "s" / "scores.parquet").read_bytes()

    class MustNotLoad:
        def __init__(self, *a, **k):
            raise AssertionError("finished shards were scored again")

    def must_not_embed(*a, **k):
        raise AssertionError("the entity texts were embedded again")

    monkeypatch.setattr(sc, "ShardBatches", MustNotLoad)
    monkeypatch.setattr(sc, "entity_text_embeddings", must_not_embed)  # kept in the output
    assert score(layout.ingest, layout.ner, layout.kb, layout.baseline_model, tmp_path / "s",
                 params.score, num_workers=0, state_dir=state) == first
    assert (tmp_path / "s" / "scores.parquet").read_bytes() == digest


def test_score_batches_span_shards_without_changing_results(chain, tmp_path):
    layout, params, _ = chain
    small = params.score.model_copy(update={"batch_size": 7})  # 50-image shards: crossing
    score(layout.ingest, layout.ner, layout.kb, layout.baseline_model, tmp_path / "s", small,
          num_workers=2)
    want = pq.read_table(layout.score / "scores.parquet").to_pandas()
    got = pq.read_table(tmp_path / "s" / "scores.parquet").to_pandas()
    assert (got.key.tolist(), got.entity_id.tolist()) == (want.key.tolist(),
                                                          want.entity_id.tolist())
    np.testing.assert_allclose(got.score, want.score, atol=1e-5)


def test_evaluate_stage_on_a_benchmark_folder_of_its_own(chain, tmp_path):
    """The stage on a GPR1200-layout download (images/ inside, categories the demo's
    classes.json has never heard of): no seen/unseen split borrowed from the demo, no crash."""
    import shutil

    import yaml

    from mofi_core.config.load import apply_overrides, read_params_file
    from mofi_core.models.pretrained import import_clip
    from mofi_core.runner import execute
    from mofi_core.stages import BY_NAME
    from tests.conftest import ROOT, TINY

    layout, _, _ = chain
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    for part in ("benchmark", "corpus", "kb"):
        (project / "data" / part).symlink_to(layout.root / "data" / part)
    (project / "models").mkdir()
    for model in ("supervised", "baseline"):
        (project / "models" / model).symlink_to(layout.root / "models" / model)
    # weights brought in from a file: compared beside the candidate and the control
    from safetensors.torch import save_file

    from mofi_core.models.artifact import load_model

    clip, _ = load_model(layout.baseline_model)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    import_clip("mofi-tiny", tmp_path / "w.safetensors", project / "models" / "mine")

    gpr = tmp_path / "GPR1200" / "images"
    gpr.mkdir(parents=True)
    sources = sorted(layout.gpr.glob("*.jpg"))
    for i, src in enumerate(sources):
        cat = 900 + int(src.name.split("_")[0])
        shutil.copy(src, gpr / f"{cat}_{i:05x}ab.jpg")
    raw = apply_overrides(read_params_file(ROOT / "params.yaml"), {
        **TINY, "train.recipes": ["supervised"], "evaluate.gpr_dir": str(gpr.parent),
        "evaluate.extra_models": ["mine"],
        "evaluate.labelled_dir": "none", "evaluate.pictures": False})
    (project / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    metrics = execute(BY_NAME["evaluate"], project / "params.yaml", project)
    assert metrics["benchmark"]["images"] == len(sources)
    assert metrics["benchmark"]["classes"] == len({s.name.split("_")[0] for s in sources})
    assert set(metrics["supervised"]) == {"gpr_map", "recall_at_1", "recall_at_5"}
    # the imported copy of the control's weights ranks exactly as the control
    assert metrics["mine"] == metrics["baseline"]
    assert metrics["mine_vs_baseline"]["gpr_map"] == 1.0
    table = (project / "reports" / "evaluate.md").read_text(encoding="utf-8")
    assert f"({len(sources)} retrieval images" in table and "gpr_map_seen" not in table
