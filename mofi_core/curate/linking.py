"""Linking: rank a mention's KB candidates before CLIP sees them, and send only the best few.

A surface form names every entity that has it as name or alias; on Wikidata "Paris" names
hundreds of items, so the candidates of a mention grow with the KB. Each candidate gets a score,
a weighted sum of evidence that needs no image:

- ``prior``: its popularity, ``log(1 + sitelinks)`` (entities photographed and named on the web
  are mostly the well-known ones);
- ``name``: 1 when the mention is the candidate's name, not only one of its aliases;
- ``type``: +1 when its KB type fits the NER label of the mention, -1 when it contradicts it,
  0 without evidence (a gazetteer-only mention);
- ``co_mention``: 1 when the same alt-text names it unambiguously elsewhere;
- ``context``: how many content words of the alt-text (outside the mention) its description and
  type share ("painter", the town it is from).

``link_score`` is the softmax of the scores over the candidates kept. At most
``ner.max_candidates`` are kept, the best first; candidates tied with the last one kept are all
kept too, so a tie is never settled by the order of the KB. Weights are params
(``ner.link_weights``); ``mofi report`` measures each kind of evidence alone against the truth.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# spaCy NER label -> KB types it is compatible with (labels not listed carry no type evidence)
TYPE_COMPATIBILITY = {
    "PERSON": {"person"}, "ORG": {"organization"}, "GPE": {"place"},
    "LOC": {"place", "landmark"}, "FAC": {"landmark"}, "PRODUCT": {"product"},
    "WORK_OF_ART": {"product"},
}
EVIDENCE = ("prior", "name", "type", "co_mention", "context")
_WORD = re.compile(r"[^\W\d_]{3,}")
_STOP = frozenset("the and for from with near view photo image picture this that its his her "
                  "are was were has have had not but you your our their them into over under "
                  "at by of in on to an a is it as be or".split())


def words(text: str) -> set[str]:
    """The content words of a text: letters only, 3 or more, lower case, no stop word."""
    return {w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in _STOP}


@dataclass(frozen=True)
class Candidate:
    entity_id: str
    name_match: bool
    type: str
    popularity: int
    description: str
    # the content words of its description and type, read once (the context evidence)
    words: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", frozenset(words(f"{self.description} {self.type}")))


class CandidateSet(Sequence):
    """One surface form's candidates, with what ranking reads of them laid out once as arrays
    (popularity, name match, type, an index from each description word to its candidates):
    ranking a mention then costs a few array operations and a look-up per context word, not a
    Python loop over every namesake of the form."""

    def __init__(self, cands: Sequence[Candidate]) -> None:
        self.cands = list(cands)
        self.ids = [c.entity_id for c in self.cands]
        self._index = {e: i for i, e in enumerate(self.ids)}
        n = len(self.cands)
        self._base = np.zeros((n, len(EVIDENCE)))
        self._base[:, 0] = [math.log1p(max(c.popularity, 0)) for c in self.cands]
        self._base[:, 1] = [float(c.name_match) for c in self.cands]
        by_type: dict[str, list[int]] = defaultdict(list)
        by_word: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(self.cands):
            by_type[c.type].append(i)
            for w in c.words:
                by_word[w].append(i)
        self._by_type = {t: np.asarray(ix) for t, ix in by_type.items()}
        self._by_word = {w: np.asarray(ix) for w, ix in by_word.items()}
        # each candidate's place in id order: equal scores are listed by id
        self.id_rank = np.argsort(np.argsort(np.asarray(self.ids, dtype=object)))

    def __len__(self) -> int:
        return len(self.cands)

    def __getitem__(self, i):
        return self.cands[i]

    def evidence(self, label: str, co_mentioned: set[str], context: set[str]) -> np.ndarray:
        """(candidates x :data:`EVIDENCE`) matrix of the evidence for each candidate."""
        out = self._base.copy()
        fits = TYPE_COMPATIBILITY.get(label)
        if fits is not None:
            out[:, 2] = -1.0
            for t in fits:
                if t in self._by_type:
                    out[self._by_type[t], 2] = 1.0
        for e in co_mentioned:
            i = self._index.get(e)
            if i is not None:
                out[i, 3] = 1.0
        for w in context:
            ix = self._by_word.get(w)
            if ix is not None:
                out[ix, 4] += 1.0
        return out


def evidence(cands: Sequence[Candidate], label: str, co_mentioned: set[str],
             context: set[str]) -> np.ndarray:
    """(candidates x :data:`EVIDENCE`) matrix of the evidence for each candidate."""
    return _as_set(cands).evidence(label, co_mentioned, context)


def _as_set(cands: Sequence[Candidate]) -> CandidateSet:
    return cands if isinstance(cands, CandidateSet) else CandidateSet(cands)


def rank(cands: Sequence[Candidate], label: str, co_mentioned: set[str], context: set[str],
         weights: dict[str, float], max_candidates: int) -> list[tuple[str, float]]:
    """The candidates kept, ``(entity_id, link_score)``, best first (equal scores by id)."""
    if not len(cands):
        return []
    cs = _as_set(cands)
    w = np.array([weights.get(k, 0.0) for k in EVIDENCE])
    score = cs.evidence(label, co_mentioned, context) @ w
    order = np.lexsort((cs.id_rank, -score))
    kept, rest = order[:max_candidates], order[max_candidates:]
    kept = np.concatenate([kept, rest[score[rest] == score[kept[-1]]]])  # ties never cut
    s = score[kept]
    p = np.exp(s - s.max())
    p /= p.sum()
    return [(cs.ids[i], float(x)) for i, x in zip(kept, p, strict=True)]
