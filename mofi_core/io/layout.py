"""Where each stage reads and writes, relative to one project root.

Stages talk only through these files; ``dvc.yaml`` lists the same paths as deps and outs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    # corpus ---------------------------------------------------------------------------------
    @property
    def corpus(self) -> Path:
        return self.root / "data" / "corpus"

    @property
    def kb(self) -> Path:
        return self.corpus / "kb.parquet"

    @property
    def corpus_shards(self) -> Path:
        return self.corpus / "shards"

    @property
    def truth(self) -> Path:
        """Ground truth of the demo world. Only quality reports may read it."""
        return self.root / "data" / "truth"

    @property
    def benchmark(self) -> Path:
        return self.root / "data" / "benchmark"

    @property
    def gpr(self) -> Path:
        return self.benchmark / "gpr1200"

    # curation -------------------------------------------------------------------------------
    @property
    def ingest(self) -> Path:
        return self.root / "data" / "ingest"

    @property
    def ner(self) -> Path:
        return self.root / "data" / "ner"

    @property
    def score(self) -> Path:
        return self.root / "data" / "score"

    @property
    def i2e(self) -> Path:
        return self.root / "data" / "i2e"

    # models and reports ---------------------------------------------------------------------
    @property
    def baseline_model(self) -> Path:
        return self.root / "models" / "baseline"

    @property
    def mofi_model(self) -> Path:
        return self.root / "models" / "mofi"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def state(self, stage: str) -> Path:
        """Resume records of a shard stage; outside the DVC outputs, git-ignored."""
        return self.root / ".mofi" / "state" / stage

    def scratch(self, stage: str) -> Path:
        """Downloads and temporaries of a stage: never inside an output folder, so nothing
        partial is hashed or published."""
        return self.root / ".mofi" / "scratch" / stage

    def metrics(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}.json"

    def plot(self, name: str) -> Path:
        return self.root / "plots" / name
