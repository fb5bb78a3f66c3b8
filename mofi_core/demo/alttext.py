"""Web-like alt-text for a demo image: right names, wrong names, no names, junk."""

from __future__ import annotations

import numpy as np

from mofi_core.config.corpus import NoiseConfig
from mofi_core.demo.entities import Entity

_WITH_NAME = ("{n}", "a photo of {n}", "{n} at dusk", "view of {n} from the street",
              "{n} - stock photo", "my trip: {n}", "{n}, close-up", "beautiful {n} today")
_GENERIC = {"person": "a person smiling at the camera", "landmark": "an old tower on a hill",
            "organization": "a company logo on a wall", "product": "a new gadget on a table",
            "species": "an animal in the wild", "place": "a scenic coastline"}
_BOILERPLATE = ("IMG_{d}.JPG", "click here to enlarge", "image", "DSC{d}", "thumbnail {d}",
                "Download free HD wallpaper")
_FOREIGN = ("Foto von {n} am Abend", "Vista de {n} al atardecer", "Photo de {n} en été",
            "Veduta di {n}")
_DISTRACTOR = ("{t} | Photo by {d}", "{t} - buy now at {d}", "{t} near {d}", "{d} presents: {t}")
KINDS = ("name", "alias", "lowercase", "typo", "generic", "boilerplate", "empty", "foreign")


def _typo(text: str, rng: np.random.Generator) -> str:
    if len(text) < 4:
        return text
    i = int(rng.integers(1, len(text) - 1))
    return text[:i] + text[i + 1] + text[i] + text[i + 2:] if rng.random() < 0.5 else \
        text[:i] + text[i + 1:]


def choose_kind(noise: NoiseConfig, rng: np.random.Generator) -> str:
    weights = np.array([getattr(noise, k) for k in KINDS], dtype=float)
    if weights.sum() <= 0:
        raise ValueError("corpus.noise: all alt-text kind weights are 0; give at least one > 0")
    return str(rng.choice(KINDS, p=weights / weights.sum()))


def context_phrase(e: Entity) -> str:
    """What a caption may say of an entity beside its name: its description without the name
    ("a painter from Norvik")."""
    desc = e.kb.description.rstrip(".")
    return desc.replace(f"{e.name} is ", "", 1).replace(e.name, "").strip(" ,")


def alt_text(shown: list[Entity], distractors: list[Entity], kind: str,
             rng: np.random.Generator, context: float = 0.0) -> str:
    """Alt-text for an image showing ``shown``; ``distractors`` are named but not shown.
    ``context``: the chance that a caption naming the entity also says what it is (its
    description's words, what tells it from namesakes); 0 draws nothing."""
    main = shown[0]
    name = main.name
    if kind == "alias" and main.aliases:
        name = str(rng.choice(main.aliases))
    elif kind == "lowercase":
        name = name.lower()
    elif kind == "typo":
        name = _typo(name, rng)
    if kind in ("name", "alias", "lowercase", "typo"):
        if len(shown) > 1:
            name = f"{name} and {shown[1].name}"
        text = str(rng.choice(_WITH_NAME)).format(n=name)
    elif kind == "foreign":
        text = str(rng.choice(_FOREIGN)).format(n=name)
    elif kind == "generic":
        text = _GENERIC[main.type]
    elif kind == "boilerplate":
        return str(rng.choice(_BOILERPLATE)).format(d=int(rng.integers(1000, 9999)))
    elif kind == "empty":
        return ""
    else:
        raise ValueError(f"unknown alt-text kind {kind!r}; one of {KINDS}")
    if kind != "generic" and context and rng.random() < context:  # the caption names it
        text = f"{text}, {context_phrase(main)}"
    for d in distractors:
        text = str(rng.choice(_DISTRACTOR)).format(t=text, d=d.name)
    return text
