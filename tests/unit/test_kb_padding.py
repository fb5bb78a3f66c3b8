"""The KB at the paper's scale around the demo world: Wikidata-shaped entities no image shows,
homonyms of the depicted ones at the stated rate, one popularity law for all."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mofi_core.config.corpus import PaddingConfig
from mofi_core.demo.entities import TYPES, make_entities
from mofi_core.demo.padding import BATCH, MAX_SITELINKS, kb_batches, padding_batches, popularity
from mofi_core.io import tables
from mofi_core.kb.store import normalise_alias

DEPICTED = [e.kb for e in make_entities(200, np.random.default_rng(0))]
FORMS = {normalise_alias(f): e.type for e in DEPICTED for f in (e.name, *e.aliases)}


def _table(cfg: PaddingConfig, seed: int = 0) -> pa.Table:
    return pa.Table.from_batches(list(kb_batches(DEPICTED, cfg, seed)), tables.KB)


@pytest.fixture(scope="module")
def kb():
    return _table(PaddingConfig(entities=250_000, homonym_rate=0.02, same_type_rate=0.25))


def test_the_depicted_entities_come_first_unchanged_then_the_padding(kb):
    rows = kb.slice(0, 200).to_pylist()
    assert [{k: v for k, v in r.items() if k != "popularity"} for r in rows] == \
        [{k: v for k, v in e.row().items() if k != "popularity"} for e in DEPICTED]
    assert kb.num_rows == 250_200 and len(set(kb["entity_id"].to_pylist())) == kb.num_rows
    padding = kb.slice(200)
    assert padding["entity_id"][0].as_py() == "Q10000001"
    assert set(padding["type"].to_pylist()) == set(TYPES)
    assert all(padding["description"].to_pylist())


def test_homonyms_of_depicted_names_at_the_stated_rate_and_no_accidental_namesake(kb):
    padding = kb.slice(200).to_pylist()
    homonyms = [r for r in padding if normalise_alias(r["name"]) in FORMS]
    assert len(homonyms) / len(padding) == pytest.approx(0.02, rel=0.05)
    same = [r for r in homonyms if FORMS[normalise_alias(r["name"])] == r["type"]]
    assert len(same) / len(homonyms) == pytest.approx(0.25, rel=0.1)
    # every depicted form is somebody's namesake, many times over: the Wikidata regime
    hit = {normalise_alias(r["name"]) for r in homonyms}
    assert len(hit) > 0.9 * len(FORMS)


def test_popularity_is_one_law_the_depicted_drawn_size_biased(kb):
    """A prior helps find the depicted entity, it does not decide: a depicted entity is drawn
    as a photographed one is (each count weighted by itself), its namesakes from the law."""
    pops = kb["popularity"].to_numpy()
    assert pops.min() >= 1 and pops.max() <= MAX_SITELINKS
    depicted, padding = pops[:200], pops[200:]
    # P(1) of a zeta(2) law is 6/pi^2 = 0.61; the tail is long
    assert (padding == 1).mean() == pytest.approx(6 / np.pi**2, abs=0.01)
    assert padding.max() >= 100
    # size-biased, P(k) ~ 1/k up to 400: the median m solves H(m) = H(400) / 2, m = 15; a
    # namesake reaches 15 with P = 1 - H2(14) / zeta(2) = 0.039
    harmonic = np.cumsum(1.0 / np.arange(1, 401))
    m = int(np.searchsorted(harmonic, harmonic[-1] / 2)) + 1
    assert m == 15 and 8 <= np.median(depicted) <= 30
    assert (padding >= m).mean() == pytest.approx(
        1 - (1.0 / np.arange(1, m) ** 2).sum() / (np.pi**2 / 6), abs=0.005)
    draw = popularity(100_000, 2.0, np.random.default_rng(1))
    assert np.median(draw) == 1 and draw.dtype == np.int32
    biased = popularity(100_000, 2.0, np.random.default_rng(1), size_biased=True)
    assert np.median(biased) == 15
    same = _table(PaddingConfig(depicted_popularity="same"))["popularity"].to_numpy()
    assert np.median(same) <= 2


def test_each_batch_is_a_pure_function_of_the_seed_and_its_index():
    cfg = PaddingConfig(entities=BATCH + 10)
    first = list(padding_batches(DEPICTED, cfg, seed=3))
    again = list(padding_batches(DEPICTED, cfg, seed=3))
    assert [b.num_rows for b in first] == [BATCH, 10]
    assert all(a.equals(b) for a, b in zip(first, again, strict=True))
    other = list(padding_batches(DEPICTED, cfg, seed=4))
    assert not first[1].equals(other[1])
    assert first[0].slice(0, BATCH).equals(
        next(padding_batches(DEPICTED, PaddingConfig(entities=BATCH), seed=3)))


def test_no_padding_is_the_depicted_kb_alone():
    table = _table(PaddingConfig())
    assert table["entity_id"].to_pylist() == [e.entity_id for e in DEPICTED]
