"""Params section ``build``: the filter rules that make the Image-to-Entities dataset."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mofi_core.config.section import Section


class BuildConfig(Section):
    """Filter rules are combined with AND; then the label vocabulary is cut by image counts."""

    rules: tuple[Literal["threshold", "top_k", "null_quantile", "fdr"], ...] = Field(
        ("threshold", "top_k"), min_length=1, description=(
            "which filters apply (all must pass); fdr = a threshold chosen without ground "
            "truth, the lowest whose estimated false-discovery rate is <= target_fdr"))
    threshold: float = Field(0.63, ge=-1, le=1, description=(
        "min cosine(image, entity text); 0.63 = make calibrate SEED=1 on the demo world"))
    calibration_seed: int | None = Field(1, description=(
        "corpus.seed of the world whose truth chose the threshold (make calibrate writes it); "
        "null = set by hand. The report says whether its label numbers are held out"))
    publish: str = Field("", description=(
        "s3://bucket/prefix: also copy the I2E dataset there (vocab.json last), for training "
        "clusters that stream from S3 (train.data)"))
    top_k: int = Field(1, ge=1, description=(
        "keep the k best candidates of an image, ranked by score + link_weight * "
        "log(link score)"))
    link_weight: float = Field(0.075, ge=0, description=(
        "how much ner's link score (the text evidence: prior, type, context) weighs in top_k's "
        "ranking, in cosine units per unit of log(link score); 0 = the CLIP score alone (and "
        "no ner output needed). Namesakes share most of their text, so CLIP alone ties them. "
        "0.075 = benchmarks/calibrate_link_weight.py on the 2M-entity world of seed 1"))
    null_quantile: float = Field(0.95, gt=0, lt=1, description=(
        "keep a candidate scoring above this quantile of the image's null scores"))
    target_fdr: float = Field(0.05, gt=0, lt=1, description=(
        "rule fdr: the estimated share of wrong labels the threshold may let through"))
    fdr_bins: int = Field(40, ge=4, le=400, description=(
        "score histogram bins of the label-free estimate (decoy-calibrated mixture)"))
    fdr_sample: float = Field(1.0, gt=0, le=1, description=(
        "share of the images (fixed by key) the label-free estimate is fitted on"))
    min_images_per_entity: int = Field(5, ge=1)
    max_images_per_entity: int = Field(0, ge=0, description="cap per entity (best scores); 0=none")

    @model_validator(mode="after")
    def _one_threshold_rule(self) -> BuildConfig:
        if "fdr" in self.rules and "threshold" in self.rules:
            raise ValueError("build.rules lists both threshold and fdr: fdr chooses the "
                             "threshold itself; keep one of them")
        return self
