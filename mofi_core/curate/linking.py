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


def evidence(cands: list[Candidate], label: str, co_mentioned: set[str],
             context: set[str]) -> np.ndarray:
    """(candidates x :data:`EVIDENCE`) matrix of the evidence for each candidate."""
    fits = TYPE_COMPATIBILITY.get(label)
    out = np.zeros((len(cands), len(EVIDENCE)))
    for i, c in enumerate(cands):
        out[i] = (math.log1p(max(c.popularity, 0)), float(c.name_match),
                  0.0 if fits is None else (1.0 if c.type in fits else -1.0),
                  float(c.entity_id in co_mentioned),
                  float(len(context & c.words)))
    return out


def rank(cands: list[Candidate], label: str, co_mentioned: set[str], context: set[str],
         weights: dict[str, float], max_candidates: int) -> list[tuple[str, float]]:
    """The candidates kept, ``(entity_id, link_score)``, best first (equal scores by id)."""
    if not cands:
        return []
    w = np.array([weights.get(k, 0.0) for k in EVIDENCE])
    score = evidence(cands, label, co_mentioned, context) @ w
    order = sorted(range(len(cands)), key=lambda i: (-score[i], cands[i].entity_id))
    kept = order[:max_candidates]
    cut = score[kept[-1]]
    kept += [i for i in order[max_candidates:] if score[i] == cut]  # a tie is never cut by order
    s = score[kept]
    p = np.exp(s - s.max())
    p /= p.sum()
    return [(cands[i].entity_id, float(x)) for i, x in zip(kept, p, strict=True)]
