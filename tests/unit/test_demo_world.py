import hashlib

import numpy as np
import pyarrow.parquet as pq

from mofi_core.config import NoiseConfig, apply_overrides, parse_params
from mofi_core.demo.alttext import alt_text, choose_kind
from mofi_core.demo.entities import make_entities
from mofi_core.demo.world import generate_world
from mofi_core.io.layout import Layout
from mofi_core.io.shards import iter_samples
from mofi_core.kb import KBEntity, KnowledgeBase
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
    assert stats.samples == c.num_entities * c.images_per_entity
    keys = [s["__key__"] for shard in sorted(layout.corpus_shards.glob("*.tar"))
            for s in iter_samples(shard)]
    assert len(keys) == len(set(keys)) == stats.samples
    assert not list(layout.corpus.rglob("truth*"))  # the sidecar is not in the corpus folder
    truth = pq.read_table(layout.truth / "truth.parquet")
    assert sorted(truth["key"].to_pylist()) == sorted(keys)
    assert len(KnowledgeBase.load(layout.kb)) == c.num_entities
    bench = sorted(layout.gpr.glob("*.jpg"))
    classes = {p.name.split("_")[0] for p in bench}
    assert len(bench) == (c.benchmark.seen_classes + c.benchmark.unseen_classes) * \
        c.benchmark.images_per_class
    assert len(classes) == c.benchmark.seen_classes + c.benchmark.unseen_classes


def test_world_is_deterministic_in_its_seed(tmp_path):
    params = parse_params(apply_overrides({}, TINY))
    digests = []
    for name in ("a", "b"):
        lay = Layout(tmp_path / name)
        generate_world(params.corpus, lay.corpus, lay.truth, lay.benchmark)
        digests.append((_digest(lay.corpus), _digest(lay.benchmark)))
    assert digests[0] == digests[1]


def test_benchmark_images_never_appear_in_the_corpus(tiny_world):
    layout, _, _ = tiny_world
    corpus = {hashlib.sha256(s["jpg"]).hexdigest()
              for shard in layout.corpus_shards.glob("*.tar") for s in iter_samples(shard)}
    bench = {hashlib.sha256(p.read_bytes()).hexdigest() for p in layout.gpr.glob("*.jpg")}
    assert not corpus & bench


def test_some_aliases_are_shared_so_linking_must_disambiguate():
    entities = make_entities(200, np.random.default_rng(0))
    kb = KnowledgeBase([KBEntity(
        e.entity_id, e.name, e.aliases, e.description, e.type) for e in entities])
    assert any(len(c) > 1 for c in kb.alias_index.values())


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
