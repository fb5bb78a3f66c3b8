"""Where each stage reads and writes, relative to one project root.

Stages talk only through these files; ``dvc.yaml`` lists the same paths as deps and outs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    def under_root(self, path: str | Path) -> Path:
        """A path given in params.yaml: as it is when absolute, else under the project root
        (where DVC runs every stage)."""
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    # corpus ---------------------------------------------------------------------------------
    @property
    def corpus(self) -> Path:
        return self.root / "data" / "corpus"

    @property
    def corpus_kb(self) -> Path:
        """The demo world's KB, as the corpus stage writes it (the kb stage's demo source)."""
        return self.corpus / "kb.parquet"

    @property
    def kb(self) -> Path:
        """The knowledge base every stage after ``kb`` opens, whatever its source: the folder
        the kb stage writes (the table, its memory-mapped copy and the indexes)."""
        return self.root / "data" / "kb"

    @property
    def kb_table(self) -> Path:
        """The KB as a user reads it (``tables.KB`` parquet), in :attr:`kb`."""
        return self.kb / "kb.parquet"

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
    def decontam(self) -> Path:
        return self.root / "data" / "decontam"

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

    def model(self, name: str) -> Path:
        """``models/<name>``: a candidate's folder (its recipe) or ``baseline``, the control."""
        return self.root / "models" / name

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

    def metrics(self, stage: str, item: str = "") -> Path:
        """``metrics/<stage>.json``: ``{"<stage>": {...}}``, so DVC shows each key prefixed by
        its stage (``evaluate.multitask.gpr_map``) in ``dvc metrics show/diff`` and ``dvc exp
        show``; an instance of a foreach stage: ``metrics/<stage>_<item>.json`` holding
        ``{"<stage>": {"<item>": {...}}}``."""
        return self.root / "metrics" / (f"{stage}_{item}.json" if item else f"{stage}.json")

    def read_metrics(self, stage: str, item: str = "") -> dict:
        """The metrics ``stage`` (instance ``item``) wrote. Raises
        ``FileNotFoundError``/``ValueError`` naming the file and the stage to re-run."""
        import json

        path = self.metrics(stage, item)
        if item:
            stage = f"{stage}@{item}"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} is missing; run stage {stage!r} first") from None
        except ValueError as err:
            raise ValueError(f"{path} is not JSON ({err}); run stage {stage!r} again") from None
        base, _, item = stage.partition("@")
        block = data.get(base) if isinstance(data, dict) else None
        if item and isinstance(block, dict):
            block = block.get(item)
        if not isinstance(block, dict):
            raise ValueError(f"{path} holds no {stage!r} block (written by an older version?); "
                             f"run stage {stage!r} again")
        return block

    def plot(self, name: str) -> Path:
        return self.root / "plots" / name
