"""The gazetteer: every KB name and alias found in a text, at a cost that does not grow with the KB.

A phrase is a surface form as the NER pipeline's tokenizer splits it, lowercased: its *key* is
the token texts' lowercase forms joined by ``\\x1f`` ("Mt. Fuji" -> ``"mt.\\x1ffuji"``). A span
of a document is a mention when its tokens' key is a phrase key: the same rule as spaCy's
``PhraseMatcher(attr="LOWER")`` over the surface forms, which this replaces (a test holds the
two equal on the demo world). Matching enumerates a document's token n-grams up to the longest
phrase, hashes their keys and looks them up in the sorted hash array the ``kb`` stage wrote
(:class:`mofi_core.kb.store.Phrases`, memory-mapped): about (tokens x longest phrase) hashes
and one vectorised binary search per document, whatever the number of entities.

Overlapping matches are resolved as before, by spaCy's ``filter_spans`` (the longest wins, the
first on ties), in :mod:`mofi_core.curate.ner`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from mofi_core.kb.store import Phrases, hashes, surface_forms

SEP = "\x1f"


def tokenizer_id(nlp) -> str:
    """What the phrase keys depend on: the pipeline and the spaCy version that tokenized them."""
    import spacy

    meta = nlp.meta
    return f"{meta.get('lang', '')}_{meta.get('name', '')}-{meta.get('version', '')} " \
           f"(spaCy {spacy.__version__})"


def load_tokenizer(model: str):
    """The spaCy pipeline ``model`` with no component but its tokenizer."""
    import spacy

    return spacy.load(model, exclude=["tok2vec", "tagger", "morphologizer", "parser", "senter",
                                      "attribute_ruler", "lemmatizer", "ner",
                                      "trainable_lemmatizer"])


def build_phrases(table: pa.Table, nlp, batch_size: int = 4096) -> Phrases:
    """The phrase index of a KB table: every name and alias tokenized by ``nlp``'s
    tokenizer."""
    forms = [f for _, f in surface_forms(table)]
    keys: set[str] = set()
    longest = 0
    for doc in nlp.tokenizer.pipe(forms, batch_size=batch_size):
        if len(doc):
            keys.add(SEP.join(t.lower_ for t in doc))
            longest = max(longest, len(doc))
    ordered = sorted(keys)
    h = hashes(ordered)
    order = np.argsort(h, kind="stable")
    return Phrases(h[order], pa.array([ordered[i] for i in order], pa.string()), longest,
                   tokenizer_id(nlp))


def find(docs: Iterable, phrases: Phrases) -> list[list[tuple[int, int]]]:
    """For each document, the token spans ``(start, end)`` whose key is a phrase, in the order
    of their start and then their length. One hash lookup for all the documents' n-grams."""
    keys: list[str] = []
    spans: list[tuple[int, int, int]] = []  # (document, start, end) of each key
    n = 0
    for n, doc in enumerate(docs, 1):
        lower = [t.lower_ for t in doc]
        for i in range(len(lower)):
            key = lower[i]
            keys.append(key)
            spans.append((n - 1, i, i + 1))
            for j in range(i + 1, min(len(lower), i + phrases.max_tokens)):
                key = key + SEP + lower[j]
                keys.append(key)
                spans.append((n - 1, i, j + 1))
    out: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for k in np.flatnonzero(phrases.hits(keys)):
        d, start, end = spans[k]
        out[d].append((start, end))
    return out
