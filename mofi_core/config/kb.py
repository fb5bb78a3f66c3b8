"""Params section ``kb``: the knowledge base mentions are linked to (:mod:`mofi_core.kb.store`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mofi_core.config.section import Section

DEMO_KB = "data/corpus/kb.parquet"  # where the corpus stage writes the demo world's KB


class KBConfig(Section):
    """The knowledge base mentions are linked to. The ``kb`` stage reads it from ``path``,
    checks its schema once and writes ``data/kb/kb.parquet``, which every later stage reads;
    ``path`` is the stage's DVC dependency, so a changed file re-runs it."""

    source: Literal["demo", "parquet", "wikidata"] = Field("demo", description=(
        "demo: the corpus stage's KB (data/corpus/kb.parquet); parquet: your KB file (parquet "
        "with entity_id, name, aliases, description, type, or the same as JSON Lines); "
        "wikidata: a Wikidata JSON dump (.json, .json.gz, .json.bz2), streamed"))
    path: str = Field(DEMO_KB, min_length=1, description=(
        "the file the source reads, relative to the project root (source demo: "
        f"{DEMO_KB})"))
    language: str = Field("en", min_length=1, description=(
        "wikidata: language of labels, aliases and descriptions"))
    min_sitelinks: int = Field(1, ge=0, description=(
        "wikidata: keep items with at least this many sitelinks (a popularity filter)"))
    type_map: dict[str, str] = Field(default_factory=dict, description=(
        "wikidata: P31 (instance of) id -> KB type, e.g. {Q5: person}; empty: the built-in "
        "map (mofi_core/kb/wikidata.py)"))

    @model_validator(mode="after")
    def _path_fits_source(self) -> KBConfig:
        if self.source == "demo" and self.path != DEMO_KB:
            raise ValueError(f"kb.source demo reads the corpus stage's {DEMO_KB}, not "
                             f"{self.path!r}: for your own file set kb.source to parquet or "
                             "wikidata")
        if self.source != "demo" and self.path == DEMO_KB:
            raise ValueError(f"kb.source {self.source} needs kb.path: the KB file or the dump "
                             f"to read (it is still the demo's {DEMO_KB})")
        return self
