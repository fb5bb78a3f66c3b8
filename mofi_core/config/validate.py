"""Params section ``validate``: the great-expectations gate before training."""

from __future__ import annotations

from pydantic import Field

from mofi_core.config.section import Section


class ValidateConfig(Section):
    RUNTIME = ("data_docs",)  # an HTML view of the results, not part of them
    max_labels_per_image: int = Field(5, ge=1)
    min_fraction_of_corpus: float = Field(0.05, ge=0, le=1, description=(
        "the I2E dataset must hold at least this share of the ingested images"))
    max_entity_share: float = Field(0.5, gt=0, le=1, description=(
        "warning when one entity holds more than this share of the labels"))
    max_imbalance: float = Field(50.0, ge=1, description=(
        "warning when the largest entity has more than this many times the median's images"))
    data_docs: bool = Field(True, description="build great-expectations Data Docs (HTML)")
