"""The demo world's ground truth scores a corpus only when both carry the same world identity."""

import json

import pytest

from mofi_core.config.corpus import CorpusConfig
from mofi_core.demo.world import WORLD_FILE, world_identity
from mofi_core.io.layout import Layout
from mofi_core.report import TruthMismatchError, demo_truth


def _project(tmp_path, truth_id="w1", corpus_id="w1"):
    lay = Layout(tmp_path)
    lay.corpus_shards.mkdir(parents=True)
    lay.truth.mkdir(parents=True)
    for folder, ident in ((lay.truth, truth_id), (lay.corpus, corpus_id)):
        if ident is not None:
            (folder / WORLD_FILE).write_text(json.dumps({"world": ident}))
    return lay


def test_the_demo_corpus_with_its_own_truth(tmp_path):
    lay = _project(tmp_path)
    assert demo_truth(lay, "data/corpus/shards") == (lay.truth, "the demo world w1")
    assert demo_truth(lay, str(lay.corpus_shards))[0] == lay.truth  # absolute, same folder


@pytest.mark.parametrize("source", ["/data/img2dataset/{00000..00009}.tar",
                                    "s3://bucket/laion/shards", "other/shards"])
def test_another_corpus_is_never_scored_against_the_demo_truth(tmp_path, source):
    lay = _project(tmp_path)
    truth, why = demo_truth(lay, source)
    assert truth is None and f"this run ingested {source}" in why


@pytest.mark.parametrize("truth_id, corpus_id", [("w1", "w2"), ("w1", None), (None, "w1")])
def test_a_mismatch_is_an_error(tmp_path, truth_id, corpus_id):
    lay = _project(tmp_path, truth_id, corpus_id)
    with pytest.raises(TruthMismatchError, match=r"is not the truth of the corpus in .*"
                                                  r"dvc repro corpus"):
        demo_truth(lay, "data/corpus/shards")


def test_no_truth_folder(tmp_path):
    truth, why = demo_truth(Layout(tmp_path), "data/corpus/shards")
    assert truth is None and "only the demo world" in why


def test_the_identity_follows_every_corpus_param():
    a = world_identity(CorpusConfig())
    assert a == world_identity(CorpusConfig()) and a["seed"] == CorpusConfig().seed
    assert world_identity(CorpusConfig(seed=7))["world"] != a["world"]
    assert world_identity(CorpusConfig(images_per_entity=13))["world"] != a["world"]


@pytest.mark.slow
def test_the_generator_writes_it_into_both(tiny_world):
    layout, params, _ = tiny_world
    both = [json.loads((f / WORLD_FILE).read_text()) for f in (layout.truth, layout.corpus)]
    assert both[0] == both[1] == world_identity(params.corpus)
    assert demo_truth(layout, "data/corpus/shards")[0] == layout.truth


def test_no_truth_says_exactly_why(tmp_path):
    assert demo_truth(Layout(tmp_path), "data/corpus/shards") == (
        None, "no ground truth (only the demo world has one)")


def test_a_world_of_source_none_has_no_truth_even_for_the_demo_folder(tmp_path):
    lay = _project(tmp_path)
    (lay.truth / WORLD_FILE).write_text(json.dumps({"world": "none", "source": "none"}))
    assert demo_truth(lay, "data/corpus/shards") == (
        None, "no ground truth: corpus.source is none (your own corpus)")
    (lay.truth / WORLD_FILE).write_text(json.dumps({"world": "w1", "source": "demo"}))
    assert demo_truth(lay, "data/corpus/shards") == (lay.truth, "the demo world w1")
