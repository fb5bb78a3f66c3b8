"""Params section ``decontam``: near-copies of evaluation images kept out of training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mofi_core.config.section import Section


class DecontamConfig(Section):
    """Near-duplicates of evaluation images are kept out of every training set (I2E and the
    control's alt-text data), as DataComp does against its evaluation sets."""

    against: str = Field("", description=(
        "the folder of evaluation images to protect, searched recursively (your GPR1200 "
        "download and labelled splits); empty: data/benchmark, the demo world's"))
    method: Literal["phash", "none"] = Field("phash", description=(
        "phash: 64-bit perceptual hash of every corpus image vs every evaluation image, its "
        "centre crops and its offset-crop grid, each candidate pair then verified on pixels "
        "(mofi_core/curate/decontam.py); none: check nothing (the report then says so)"))
    max_distance: int = Field(6, ge=0, le=64, description=(
        "a corpus image within this many bits of an evaluation image or one of its centre "
        "crops is a candidate, dropped once verified (min_correlation) (6: chosen on one demo "
        "seed, checked on another; tests/unit/test_decontam.py)"))
    crops: tuple[float, ...] = Field((1.0, 0.9, 0.8), min_length=1, description=(
        "centre crops (side fraction) of each evaluation image also indexed: cropped copies"))
    offset_scales: tuple[float, ...] = Field((0.80, 0.86, 0.92), description=(
        "side fractions of the off-centre crop grid also indexed (every width x height pair "
        "at offset_steps positions per axis): crops at a random offset; () for none"))
    offset_steps: int = Field(5, ge=1, le=9, description=(
        "positions per axis of the offset grid, from one edge to the other "
        "((len(offset_scales) x offset_steps)^2 rows per evaluation image)"))
    offset_max_distance: int = Field(8, ge=0, le=64, description=(
        "bits within which an offset-grid row makes a candidate pair (verified before it "
        "drops anything)"))
    min_correlation: float = Field(0.6, ge=-1, le=1, description=(
        "verification of pairs within max_distance of a whole-image or centre-crop row: kept "
        "when the fine detail (32x32 grey minus its blur) of the corpus image and of the "
        "aligned evaluation crop correlate at least this much; -1 keeps them unverified (with "
        "offset_scales () too: pHash alone, as before)"))
    offset_min_correlation: float = Field(0.75, ge=-1, le=1, description=(
        "the same for pairs found only by an offset-grid row (a looser distance, so a "
        "stricter score); -1 keeps them unverified (not advised: a third of the demo's "
        "distinct renders have such a candidate)"))

    @field_validator("crops", "offset_scales")
    @classmethod
    def _crops_in_range(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < c <= 1 for c in v):
            raise ValueError("every crop is a side fraction in (0, 1]")
        return v
