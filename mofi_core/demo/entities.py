"""Knowledge-base entities of the demo world: names, aliases, descriptions, visual signatures.

Names are composed from pronounceable syllables and real-world naming patterns (given name +
surname, "Mount X", "X Cathedral", "X Motors", "Port X", genus-like species names) so they read
like named entities but collide with nothing real. Some aliases are deliberately shared between
two entities (a surname, a place root) so that entity linking has to disambiguate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mofi_core.kb.store import KBEntity

TYPES = ("person", "landmark", "organization", "product", "species", "place")

_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s",
           "st", "t", "tr", "v", "w", "z", "")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "io", "y")
_CODAS = ("", "", "n", "r", "l", "s", "m", "nd", "rt", "x")
_SURNAME_ENDS = ("son", "ova", "ez", "elli", "berg", "ski", "ard", "ing", "er", "os")
_PLACE_ENDS = ("ford", "ville", "stad", "haven", "mouth", "dale", "ia", "ora", "an", "ton")
_FIRST = ("Anna", "Marco", "Elena", "Tomas", "Sofia", "Jonas", "Lena", "Pavel", "Ines", "Oskar",
          "Clara", "Hugo", "Mira", "Felix", "Nora", "Emil", "Rosa", "Viktor", "Alma", "Leon",
          "Ada", "Bruno", "Daria", "Igor", "Julia", "Karim", "Maya", "Nikolai", "Olga", "Rafael")
_LANDMARK = ("{r} Tower", "Mount {r}", "{r} Bridge", "{r} Cathedral", "{r} Castle", "{r} Gate",
             "{r} Palace", "{r} Lighthouse")
_ORG = ("{r} Motors", "{r} Labs", "{r} Airlines", "{r} Records", "{r} Foods", "{r} Bank",
        "{r} Studios")
_PRODUCT = ("{r} X{n} camera", "{r} Pro {n} phone", "{r} S{n} sneaker", "{r} Z{n} bicycle",
            "{r} {n}00 watch")
_SPECIES = ("{r} warbler", "{r} lizard", "{r} orchid", "{r} beetle", "{r} trout", "{r} fox")
_PLACE = ("{p} Bay", "Lake {p}", "{p} Valley", "Port {p}", "{p} Island", "{p}")
_DESCRIPTION = {
    "person": "{name} is a {role} from {place}.",
    "landmark": "{name} is a historic {kind} near {place}.",
    "organization": "{name} is a {industry} company headquartered in {place}.",
    "product": "{name} is a consumer product made by {maker}.",
    "species": "{name} is a {kind} species native to the forests of {place}.",
    "place": "{name} is a coastal area of {place} popular with visitors.",
}
_ROLES = ("painter", "footballer", "violinist", "chemist", "film director", "architect",
          "novelist", "tennis player")
_INDUSTRY = ("car", "technology", "aviation", "music", "food", "banking", "film")

# Each type has one base silhouette (so fine-grained classes within a type look alike) and a
# background tint; each entity varies colours, pattern and a small mark.
SHAPES = {"person": "figure", "landmark": "tower", "organization": "badge", "product": "device",
          "species": "creature", "place": "landscape"}
PATTERNS = ("solid", "stripes", "dots", "checker", "band")


@dataclass(frozen=True)
class Entity:
    kb: KBEntity
    primary: tuple[int, int, int]
    secondary: tuple[int, int, int]
    pattern: str
    mark: int  # index of a small mark shape, 0-3
    aspect: float

    @property
    def entity_id(self) -> str:
        return self.kb.entity_id

    @property
    def name(self) -> str:
        return self.kb.name

    @property
    def aliases(self) -> tuple[str, ...]:
        return self.kb.aliases

    @property
    def type(self) -> str:
        return self.kb.type

    def kb_row(self) -> dict:
        return self.kb.row()


def _word(rng: np.random.Generator, syllables: int, end: tuple[str, ...] = ("",)) -> str:
    parts = [str(rng.choice(_ONSETS)) + str(rng.choice(_VOWELS)) for _ in range(syllables)]
    return ("".join(parts) + str(rng.choice(_CODAS)) + str(rng.choice(end))).capitalize()


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(20, 236, 3))


def _name_and_aliases(etype: str, root: str, rng: np.random.Generator) -> tuple[str, list[str]]:
    if etype == "person":
        first = str(rng.choice(_FIRST))
        return f"{first} {root}", [root, f"{first[0]}. {root}"]
    if etype == "place":
        name = str(rng.choice(_PLACE)).format(p=root)
        return name, [root] if name != root else []
    templates = {"landmark": _LANDMARK, "organization": _ORG, "product": _PRODUCT,
                 "species": _SPECIES}[etype]
    name = str(rng.choice(templates)).format(r=root, n=int(rng.integers(2, 10)))
    aliases = [root] if etype in ("landmark", "organization") else []
    return name, aliases


def _root(etype: str, rng: np.random.Generator) -> str:
    if etype == "person":
        return _word(rng, int(rng.integers(1, 3)), _SURNAME_ENDS)
    if etype == "place":
        return _word(rng, int(rng.integers(1, 3)), _PLACE_ENDS)
    return _word(rng, int(rng.integers(2, 4)))


def _description(etype: str, name: str, rng: np.random.Generator) -> str:
    place = _word(rng, 2, _PLACE_ENDS)
    return _DESCRIPTION[etype].format(
        name=name, place=place, role=rng.choice(_ROLES), industry=rng.choice(_INDUSTRY),
        kind=name.split()[-1].lower(), maker=str(rng.choice(_ORG)).format(r=_word(rng, 2)))


def make_entities(n: int, rng: np.random.Generator, id_offset: int = 0,
                  shared_alias_rate: float = 0.08) -> list[Entity]:
    """``n`` entities spread over :data:`TYPES`; about ``shared_alias_rate`` of them reuse the
    root (surname, place name, brand) of an earlier entity, so that alias is shared."""
    entities: list[Entity] = []
    used_names: set[str] = set()
    roots: dict[str, list[str]] = {t: [] for t in TYPES}
    while len(entities) < n:
        etype = TYPES[len(entities) % len(TYPES)]
        pool = [r for t in ("person", "place", "landmark", "organization") for r in roots[t]]
        share = pool and etype in ("person", "landmark", "organization", "place") \
            and rng.random() < shared_alias_rate
        root = str(rng.choice(pool)) if share else _root(etype, rng)
        name, aliases = _name_and_aliases(etype, root, rng)
        if name in used_names:
            continue
        used_names.add(name)
        roots[etype].append(root)
        kb = KBEntity(f"Q{id_offset + len(entities) + 1:06d}", name, tuple(aliases),
                      _description(etype, name, rng), etype)
        entities.append(Entity(kb=kb, primary=_color(rng), secondary=_color(rng),
                               pattern=str(rng.choice(PATTERNS)), mark=int(rng.integers(0, 4)),
                               aspect=float(rng.uniform(0.7, 1.3))))
    return entities
