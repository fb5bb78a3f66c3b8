"""Params sections ``executor`` and ``storage``: where shard jobs run and where stage inputs
and outputs live. Neither is a stage param: no stage tracks them, changing them re-runs nothing."""

from __future__ import annotations

from pydantic import Field, model_validator

from mofi_core.config.section import Section


class ExecutorConfig(Section):
    """Where shard jobs of ingest, ner, score and build run. Not a stage param: changing it
    re-runs nothing."""
    address: str = Field("", description=(
        "Dask scheduler address (tcp://host:8786); empty = a local process pool. "
        "MOFI_EXECUTOR_ADDRESS overrides it"))


class StorageConfig(Section):
    """Where stage inputs and outputs live when machines share no disk. Not a stage param."""
    root: str = Field("", description=(
        "s3://bucket/prefix: every stage fetches its inputs from and publishes its outputs to "
        "this prefix (mofi_core/io/storage.py); empty = the project folder only. "
        "MOFI_STORAGE_ROOT overrides it"))

    @model_validator(mode="after")
    def _s3(self) -> StorageConfig:
        if self.root and not self.root.startswith("s3://"):
            raise ValueError(f"storage.root must be an s3://bucket/prefix URL, got {self.root!r}")
        return self
