"""Knowledge-base entities of the demo world: names, aliases, descriptions, visual signatures.

Names are built from syllables so they read like named entities but collide with nothing real.
Some aliases are deliberately shared between two entities (a surname, a place root) so that
entity linking has to disambiguate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TYPES = ("person", "landmark", "organization", "product", "species", "place")

_SYLLABLES = ("ka", "lo", "ve", "ri", "mon", "tar", "sel", "bra", "dun", "fio", "gal", "hen", "is",
              "jor", "kel", "lum", "mar", "nor", "ost", "pel", "quin", "ros", "sta", "tev", "ul",
              "vor", "wen", "yel", "zan", "ar", "bel", "cor", "dra", "el", "fen", "gor")
_FIRST = ("Anna", "Marco", "Elena", "Tomas", "Sofia", "Jonas", "Lena", "Pavel", "Ines", "Oskar",
          "Clara", "Hugo", "Mira", "Felix", "Nora", "Emil", "Rosa", "Viktor", "Alma", "Leon")
_LANDMARK = ("{r} Tower", "Mount {r}", "{r} Bridge", "{r} Cathedral", "{r} Castle", "{r} Gate")
_ORG = ("{r} Motors", "{r} Labs", "{r} Airlines", "{r} Records", "{r} Foods")
_PRODUCT = ("{r} X{n} camera", "{r} Pro {n} phone", "{r} S{n} sneaker", "{r} Z{n} bicycle")
_SPECIES = ("{r} warbler", "{r} lizard", "{r} orchid", "{r} beetle", "{r} trout")
_PLACE = ("{r} Bay", "Lake {r}", "{r} Valley", "Port {r}", "{r} Island")
_DESCRIPTION = {
    "person": "{name} is a {role} known for work in {place}.",
    "landmark": "{name} is a historic {kind} that stands near {place}.",
    "organization": "{name} is a company founded in {place}.",
    "product": "{name} is a consumer product sold worldwide.",
    "species": "{name} is a species native to the region around {place}.",
    "place": "{name} is a coastal area popular with visitors.",
}
_ROLES = ("painter", "footballer", "violinist", "chemist", "film director", "architect")

# Each type has one base silhouette (so fine-grained classes within a type look alike) and a
# background tint; each entity varies colours, pattern and a small mark.
SHAPES = {"person": "figure", "landmark": "tower", "organization": "badge", "product": "device",
          "species": "creature", "place": "landscape"}
PATTERNS = ("solid", "stripes", "dots", "checker", "band")


@dataclass(frozen=True)
class Entity:
    entity_id: str
    name: str
    aliases: tuple[str, ...]
    description: str
    type: str
    primary: tuple[int, int, int]
    secondary: tuple[int, int, int]
    pattern: str
    mark: int  # index of a small mark shape, 0-3
    aspect: float

    def kb_row(self) -> dict:
        return {"entity_id": self.entity_id, "name": self.name, "aliases": list(self.aliases),
                "description": self.description, "type": self.type}


def _root(rng: np.random.Generator) -> str:
    n = int(rng.integers(2, 4))
    return "".join(rng.choice(_SYLLABLES, n)).capitalize()


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(20, 236, 3))


def _name_and_aliases(etype: str, root: str, rng: np.random.Generator) -> tuple[str, list[str]]:
    if etype == "person":
        first = str(rng.choice(_FIRST))
        return f"{first} {root}", [root, f"{first[0]}. {root}"]
    templates = {"landmark": _LANDMARK, "organization": _ORG, "product": _PRODUCT,
                 "species": _SPECIES, "place": _PLACE}[etype]
    name = str(rng.choice(templates)).format(r=root, n=int(rng.integers(2, 10)))
    aliases = [root] if etype in ("landmark", "organization", "place") else []
    return name, aliases


def make_entities(n: int, rng: np.random.Generator, id_offset: int = 0) -> list[Entity]:
    """``n`` entities spread over :data:`TYPES`; ~10% reuse a root so an alias is shared."""
    entities: list[Entity] = []
    used_names: set[str] = set()
    roots: list[str] = []
    while len(entities) < n:
        etype = TYPES[len(entities) % len(TYPES)]
        share = roots and rng.random() < 0.1
        root = str(rng.choice(roots)) if share else _root(rng)
        name, aliases = _name_and_aliases(etype, root, rng)
        if name in used_names:
            continue
        used_names.add(name)
        roots.append(root)
        place = _root(rng) + " " + str(rng.choice(("City", "Province", "Coast")))
        desc = _DESCRIPTION[etype].format(name=name, place=place, role=rng.choice(_ROLES),
                                          kind=name.split()[-1].lower())
        entities.append(Entity(
            entity_id=f"Q{id_offset + len(entities) + 1:06d}", name=name, aliases=tuple(aliases),
            description=desc, type=etype, primary=_color(rng), secondary=_color(rng),
            pattern=str(rng.choice(PATTERNS)), mark=int(rng.integers(0, 4)),
            aspect=float(rng.uniform(0.7, 1.3))))
    return entities
