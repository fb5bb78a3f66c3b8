import hashlib
import json

import numpy as np
import pyarrow.parquet as pq

from mofi_core.config.corpus import NoiseConfig
from mofi_core.config.load import apply_overrides, parse_params
from mofi_core.demo.alttext import alt_text, choose_kind
from mofi_core.demo.entities import make_entities
from mofi_core.demo.world import generate_world
from mofi_core.io.layout import Layout
from mofi_core.io.shards import iter_samples
from mofi_core.kb.store import KnowledgeBase
from mofi_core.report import read_truth
from tests.conftest import TINY


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_world_layout_counts_and_ground_truth_kept_apart(tiny_world):
    layout, params, stats = tiny_world
    c = params.corpus
    assert stats.samples == c.num_entities * c.images_per_entity + c.planted_duplicates
    keys = [s["__key__"] for shard in sorted(layout.corpus_shards.glob("*.tar"))
            for s in iter_samples(shard)]
    assert len(keys) == len(set(keys)) == stats.samples
    assert not list(layout.corpus.rglob("truth*"))  # the sidecar is not in the corpus folder
    truth = read_truth(layout.truth)
    assert sorted(truth["key"].to_pylist()) == sorted(keys)
    assert len(KnowledgeBase.open(layout.kb)) == c.num_entities
    bench = sorted(layout.gpr.glob("*.jpg"))
    classes = {p.name.split("_")[0] for p in bench}
    assert len(bench) == (c.benchmark.seen_classes + c.benchmark.unseen_classes) * \
        c.benchmark.images_per_class
    assert len(classes) == c.benchmark.seen_classes + c.benchmark.unseen_classes


def test_world_is_byte_identical_whatever_the_number_of_workers(tmp_path):
    digests = []
    for workers in (1, 2):
        params = parse_params(apply_overrides({}, {**TINY, "runtime.corpus.workers": workers}))
        lay = Layout(tmp_path / str(workers))
        generate_world(params.corpus, lay.corpus, lay.truth, lay.benchmark)
        digests.append((_digest(lay.corpus), _digest(lay.truth), _digest(lay.benchmark)))
    assert digests[0] == digests[1]


def test_shards_are_in_img2dataset_layout_with_a_parquet_each(tiny_world):
    layout, _, _ = tiny_world
    for tar in sorted(layout.corpus_shards.glob("*.tar")):
        samples = list(iter_samples(tar))
        assert all({"jpg", "txt", "json"} <= set(s) for s in samples)
        meta = pq.read_table(tar.with_suffix(".parquet")).to_pylist()
        assert [m["key"] for m in meta] == [s["__key__"] for s in samples]
        first = json.loads(samples[0]["json"])
        assert first["caption"] == samples[0]["txt"].decode() == meta[0]["caption"]
        assert meta[0]["status"] == "success"


def test_labelled_split_and_class_list(tiny_world):
    layout, params, _ = tiny_world
    b = params.corpus.benchmark
    classes = json.loads((layout.benchmark / "classes.json").read_text())
    assert [c["split"] for c in classes].count("unseen") == b.unseen_classes
    kb_ids = set(KnowledgeBase.open(layout.kb).ids())
    assert all((c["entity_id"] in kb_ids) == (c["split"] == "seen") for c in classes)
    for part, n in (("train", b.labelled_train), ("val", b.labelled_val),
                    ("test", b.labelled_test)):
        folders = sorted((layout.benchmark / "labelled" / part).iterdir())
        assert [f.name for f in folders] == sorted(c["entity_id"] for c in classes)
        assert all(len(list(f.glob("*.jpg"))) == n for f in folders)


def test_benchmark_images_never_appear_in_the_corpus(tiny_world):
    layout, _, _ = tiny_world
    corpus = {hashlib.sha256(s["jpg"]).hexdigest()
              for shard in layout.corpus_shards.glob("*.tar") for s in iter_samples(shard)}
    bench = {hashlib.sha256(p.read_bytes()).hexdigest()
             for p in layout.benchmark.rglob("*.jpg")}
    assert not corpus & bench


def test_some_aliases_are_shared_so_linking_must_disambiguate():
    entities = make_entities(200, np.random.default_rng(0))
    kb = KnowledgeBase([e.kb for e in entities])
    assert (kb.candidates_per_form() > 1).any()


def test_alt_text_kinds():
    rng = np.random.default_rng(1)
    e, d = make_entities(2, rng)
    assert e.name in alt_text([e], [], "name", rng)
    assert alt_text([e], [], "empty", rng) == ""
    assert e.name not in alt_text([e], [], "generic", rng)
    assert d.name in alt_text([e], [d], "name", rng)
    assert e.name.lower() in alt_text([e], [], "lowercase", rng)
    kinds = {choose_kind(NoiseConfig(), rng) for _ in range(500)}
    assert {"name", "alias", "generic", "boilerplate", "empty"} <= kinds
