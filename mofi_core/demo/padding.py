"""Wikidata-shaped entities that no image depicts: the KB around the demo world at any size.

The paper links alt-text against 2 million entities; the demo world depicts a few hundred. This
module surrounds them with ``corpus.kb_padding.entities`` more, shaped like Wikidata items:

- **names** from the same syllable generator as the depicted entities, in the naming patterns
  of each type (given name + surname, "Lake X", "X Motors", ...), plus the short descriptions
  Wikidata carries ("painter from Norvik", "company in Trelstad", "species of beetle");
- **homonyms**: a share ``homonym_rate`` of them is named exactly like a depicted entity (its
  name, or one of its aliases), ``same_type_rate`` of those with the depicted entity's own type
  (two painters called "Anna Brandson"), the rest with another (a ship, a film, a town named
  like a person): the ambiguity entity linking meets on Wikidata, where "Paris" names hundreds
  of items. Apart from those, a padding name never equals a depicted entity's name or alias;
- **popularity**: a sitelink count per entity, from a discrete power law (``P(k) ~ k^-a``,
  ``sitelinks_exponent``), capped at 400. A depicted entity draws its own from the same law
  size-biased (``depicted_popularity``): each count weighted by itself, as a popular entity is
  in more pictures. So the depicted one is often, not always, the most popular of its
  namesakes (about 1 in 25 of them is as popular as a median depicted entity): a prior helps,
  it does not decide; ``depicted_popularity: same`` takes even that away.

Which entities an image depicts stays exact ground truth (``data/truth``): padding entities are
never drawn into a corpus image, an alt-text or the benchmark. Everything is a pure function of
(seed, batch index): the KB is the same bytes for any batch order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from mofi_core.config.corpus import PaddingConfig
from mofi_core.demo.entities import (
    _CODAS,
    _FIRST,
    _ONSETS,
    _PLACE_ENDS,
    _SURNAME_ENDS,
    _VOWELS,
    TYPES,
)
from mofi_core.io import tables
from mofi_core.kb.store import KBEntity, normalise_alias

MAX_SITELINKS = 400
PADDING_IDS = 10_000_000  # padding ids are Q10000001, Q10000002, ...
BATCH = 100_000  # rows per generated batch (one parquet row group)
_SEED_TAG = 0x6B62  # "kb": keeps the padding's random streams apart from the world's

# short Wikidata-style descriptions per type ({p}: a place word, {k}: a kind)
_DESCRIPTIONS = {
    "person": ("{k} from {p}", "{k} born in {p}", "{k}"),
    "landmark": ("{k} in {p}", "historic {k} near {p}"),
    "organization": ("{k} company in {p}", "{k} company"),
    "product": ("{k} made in {p}", "{k}"),
    "species": ("species of {k}", "{k} native to {p}"),
    "place": ("{k} in {p}", "{k}"),
}
_KINDS = {
    "person": ("painter", "footballer", "violinist", "chemist", "film director", "architect",
               "novelist", "tennis player", "politician", "actor"),
    "landmark": ("tower", "bridge", "cathedral", "castle", "gate", "palace", "lighthouse"),
    "organization": ("car", "technology", "aviation", "music", "food", "banking", "film"),
    "product": ("camera", "phone", "sneaker", "bicycle", "watch"),
    "species": ("warbler", "lizard", "orchid", "beetle", "trout", "fox"),
    "place": ("village", "town", "bay", "lake", "valley", "island"),
}
# a homonym of another type takes one of these kinds of item that are named like anything
_HOMONYM_TYPES = ("place", "organization", "product", "landmark")
_PATTERNS = {
    "person": "{f} {w}", "landmark": "{w} {K}", "organization": "{w} {K}",
    "product": "{w} {K}", "species": "{w} {k}", "place": "{w}",
}


def popularity(n: int, exponent: float, rng: np.random.Generator, size_biased: bool = False
               ) -> np.ndarray:
    """``n`` sitelink counts from a discrete power law ``P(k) ~ k^-exponent`` (k >= 1), capped at
    :data:`MAX_SITELINKS`: most entities are obscure, a few are famous. ``size_biased``: drawn
    as a photographed entity is, each k weighted by k itself (``P(k) ~ k^(1 - exponent)``, up
    to the cap): a popular entity is in more pictures."""
    if not size_biased:
        return np.minimum(rng.zipf(exponent, n), MAX_SITELINKS).astype(np.int32)
    k = np.arange(1, MAX_SITELINKS + 1)
    p = k ** (1.0 - exponent)
    return rng.choice(k, n, p=p / p.sum()).astype(np.int32)


def _words(n: int, rng: np.random.Generator, ends: tuple[str, ...]) -> np.ndarray:
    """``n`` capitalised words of 1-3 syllables with one of ``ends``."""
    syll = rng.integers(1, 4, n)
    onsets, vowels = np.array(_ONSETS, dtype=object), np.array(_VOWELS, dtype=object)
    out = np.full(n, "", dtype=object)
    for s in range(3):
        part = onsets[rng.integers(0, len(onsets), n)] + vowels[rng.integers(0, len(vowels), n)]
        out = np.where(syll > s, out + part, out)
    out = out + np.array(_CODAS, dtype=object)[rng.integers(0, len(_CODAS), n)] \
        + np.array(ends, dtype=object)[rng.integers(0, len(ends), n)]
    return np.array([w[:1].upper() + w[1:] for w in out], dtype=object)


def _pick(options: tuple[str, ...], u: np.ndarray) -> np.ndarray:
    """One of ``options`` per uniform draw in ``u``."""
    return np.array(options, dtype=object)[(u * len(options)).astype(np.int64)]


def _names_and_descriptions(types: np.ndarray, rng: np.random.Generator
                            ) -> tuple[np.ndarray, np.ndarray]:
    """A name and a short description per row, of its type, sharing one kind (a painter
    is described as one)."""
    n = len(types)
    word = _words(n, rng, ("", "", *_SURNAME_ENDS, *_PLACE_ENDS))
    place = _words(n, rng, _PLACE_ENDS)
    first = np.array(_FIRST, dtype=object)[rng.integers(0, len(_FIRST), n)]
    u_kind, u_desc = rng.random(n), rng.random(n)
    names = np.empty(n, dtype=object)
    descriptions = np.empty(n, dtype=object)
    for t in TYPES:
        at = np.flatnonzero(types == t)
        kinds = _pick(_KINDS[t], u_kind[at])
        templates = _pick(_DESCRIPTIONS[t], u_desc[at])
        names[at] = [_PATTERNS[t].format(f=f, w=w, k=k, K=k.title())
                     for f, w, k in zip(first[at], word[at], kinds, strict=True)]
        descriptions[at] = [d.format(k=k, p=p)
                            for d, k, p in zip(templates, kinds, place[at], strict=True)]
    return names, descriptions


def _homonym_forms(depicted: list[KBEntity]) -> list[tuple[str, str]]:
    """(surface form, type) of every depicted name and alias, in KB order."""
    return [(form, e.type) for e in depicted for form in (e.name, *e.aliases) if form.strip()]


def kb_batches(depicted: list[KBEntity], cfg: PaddingConfig, seed: int
               ) -> Iterator[pa.RecordBatch]:
    """The demo world's whole KB: the depicted entities (each with a popularity from the
    padding's law, size-biased unless ``depicted_popularity`` is ``same``, drawn from a stream
    of its own), then the padding."""
    rng = np.random.Generator(np.random.PCG64([seed, _SEED_TAG, 1 << 40]))
    pops = popularity(len(depicted), cfg.sitelinks_exponent, rng,
                      size_biased=cfg.depicted_popularity == "size_biased")
    yield pa.RecordBatch.from_pylist(
        [{**e.row(), "popularity": int(p)} for e, p in zip(depicted, pops, strict=True)],
        schema=tables.KB)
    yield from padding_batches(depicted, cfg, seed)


def padding_batches(depicted: list[KBEntity], cfg: PaddingConfig, seed: int
                    ) -> Iterator[pa.RecordBatch]:
    """The padding entities in batches of :data:`BATCH` rows (the KB schema, ids
    ``Q10000001`` on, apart from the depicted ``Q000001``...), each a pure function of
    (seed, batch index)."""
    forms = _homonym_forms(depicted)
    taken = {normalise_alias(f) for f, _ in forms}
    for start in range(0, cfg.entities, BATCH):
        rng = np.random.Generator(np.random.PCG64([seed, _SEED_TAG, start // BATCH]))
        n = min(BATCH, cfg.entities - start)
        types = np.array(TYPES, dtype=object)[rng.integers(0, len(TYPES), n)]
        names, descriptions = _names_and_descriptions(types, rng)
        u_kind, places = rng.random(n), _words(n, rng, _PLACE_ENDS)
        homonym = rng.random(n) < cfg.homonym_rate
        picks = rng.integers(0, len(forms), n)
        same = rng.random(n) < cfg.same_type_rate
        u_other = rng.random(n)
        for i in np.flatnonzero(homonym):
            form, ftype = forms[picks[i]]
            others = tuple(t for t in _HOMONYM_TYPES if t != ftype)
            names[i] = form
            types[i] = ftype if same[i] else str(_pick(others, u_other[i:i + 1])[0])
            kind = _pick(_KINDS[types[i]], np.array([u_kind[i]]))[0]
            descriptions[i] = str(_DESCRIPTIONS[types[i]][0]).format(k=kind, p=places[i])
        # an accidental namesake of a depicted entity is renamed, never kept
        while (clash := ~homonym & np.array([normalise_alias(x) in taken for x in names])).any():
            names[clash] = names[clash] + " " + _pick(_PLACE_ENDS, rng.random(int(clash.sum())))
        yield pa.RecordBatch.from_pydict({
            "entity_id": [f"Q{PADDING_IDS + start + i + 1}" for i in range(n)],
            "name": names.tolist(), "aliases": [[] for _ in range(n)],
            "description": descriptions.tolist(), "type": types.tolist(),
            "popularity": popularity(n, cfg.sitelinks_exponent, rng)}, schema=tables.KB)
