"""Params section ``ingest``: decode-checking and normalising the input shards."""

from __future__ import annotations

from pydantic import Field, model_validator

from mofi_core.config.section import Section


class IngestConfig(Section):
    RUNTIME = ("workers", "fetch_attempts", "fetch_backoff_s")
    min_side: int = Field(16, ge=1, description="smaller images are rejected")
    max_side: int = Field(4096, ge=1, description="larger images are rejected")
    max_pixels: int = Field(50_000_000, ge=1, description="decompression-bomb guard")
    max_text_chars: int = Field(1000, ge=1, description="longer alt-texts are truncated")
    max_text_bytes: int = Field(65_536, ge=1, description=(
        "alt-texts longer than this (raw bytes) are rejected: not a caption"))
    max_member_bytes: int = Field(64 * 2**20, ge=1, description=(
        "tar members larger than this are rejected unread"))
    jpeg_quality: int = Field(95, ge=1, le=100, description="quality when re-encoding to JPEG")
    input: str = Field("data/corpus/shards", min_length=1, description=(
        "shards to read: a folder, a glob or {a..b} brace pattern, a manifest file (.txt/.lst "
        "or @file) of paths/URLs, or one http(s)/file URL; relative to the project root"))
    workers: int = Field(0, ge=0, description="shard processes; 0 = all cores")
    fetch_attempts: int = Field(4, ge=1, description=(
        "tries to fetch one remote shard before the stage fails (network, server and "
        "credential failures are never counted as bad data)"))
    fetch_backoff_s: float = Field(2.0, ge=0, description=(
        "wait before the second try of a shard fetch, doubled for each further one"))
    max_reject_fraction: float = Field(0.5, ge=0, le=1, description=(
        "fail the run when more than this share of the samples is rejected or lost (a shard "
        "that cannot be read counts as the samples it would have held)"))

    @model_validator(mode="after")
    def _sides(self) -> IngestConfig:
        if self.min_side > self.max_side:
            raise ValueError(f"ingest.min_side ({self.min_side}) > "
                             f"ingest.max_side ({self.max_side})")
        return self
