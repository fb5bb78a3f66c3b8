"""The stage table: one row per pipeline stage, the single place each stage is described.

The CLI makes one ``mofi <stage>`` command per row, the runner (:mod:`mofi_core.runner`) loads the
row's entry function and its params section, and the config loader takes its section names from
here. ``dvc.yaml`` is rendered from it (``python -m tools.dvc_yaml --write``: command, data
inputs, outputs, params, and as code deps the modules each stage really runs); ``make lint``
and ``tests/unit/test_dvc_yaml.py`` fail when the two drift.

Adding a stage: write its entry ``run(cfg, ctx) -> metrics`` in one module, add a row here and a
params module in :mod:`mofi_core.config`, then ``python -m tools.dvc_yaml --write``.

This module imports nothing from the project, so every layer may read it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Out:
    """A DVC output of a stage. ``cache=False``: small files git could track (reports); ``persist``:
    kept across re-runs, the stage skips the shards it already finished."""

    path: str
    cache: bool = True
    persist: bool = False


@dataclass(frozen=True)
class Plot:
    """A plot the stage writes for ``dvc plots show/diff``: a PNG image or a folder of them
    (no ``x``/``y``: readable offline, unlike DVC's HTML for data plots, which loads its
    renderer from a CDN), or a CSV with ``x``/``y`` columns. (A ``cache: false`` output that is
    neither a plot nor a metric would stop DVC from keeping the stage in its run cache.)"""

    path: str
    x: str = ""
    y: str = ""


@dataclass(frozen=True)
class StageSpec:
    name: str
    entry: str  # "module:function", called as function(cfg, ctx) -> metrics dict
    section: str  # the params.yaml section it reads (its runtime knobs: runtime.<section>)
    help: str
    inputs: tuple[str, ...] = ()  # data it reads (other stages' outputs, or external data)
    outs: tuple[Out, ...] = ()
    plots: tuple[Plot, ...] = ()
    streamed: tuple[str, ...] = ()  # inputs read in place from the storage root, never fetched
    untracked: tuple[str, ...] = ()  # written on purpose outside DVC (git-ignored)
    check: str = ""  # "module:function", check(cfg, ctx): what the stage needs, before any work
    # False: the metrics describe state outside the project (the MLflow registry), not the
    # commit; they are a git-ignored output, not DVC metrics, so a fresh clone runs the stage
    metrics_in_git: bool = True
    # a DVC ``foreach`` stage: one instance per value of the list ``<section>.<foreach>`` (each
    # its own DVC stage ``name@value``, Prefect task and MLflow run); the value sets the
    # section's key ``item_key`` and ``{item}`` in paths. ``item``: set in an instance.
    foreach: str = ""
    item_key: str = ""
    item: str = ""
    # further params keys the stage reads (``train.recipes``), tracked by DVC beside its section
    also_params: tuple[str, ...] = ()
    # params keys whose value is a path the stage reads (``kb.path``): a DVC dependency written
    # ``${kb.path}`` in dvc.yaml, so DVC hashes whatever file the params name
    param_inputs: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        """The stage's DVC name: ``train@multitask`` for an instance, else the name."""
        return f"{self.name}@{self.item}" if self.item else self.name

    @property
    def metrics(self) -> str:
        """``metrics/<name>.json``; ``metrics/<name>_<item>.json`` for a foreach stage."""
        return f"metrics/{self.name}_{self.item or '{item}'}.json" if self.foreach \
            else f"metrics/{self.name}.json"

    def instance(self, item: str) -> StageSpec:
        """The row for one value of a ``foreach`` stage, with ``{item}`` filled in."""
        if not self.foreach:
            raise ValueError(f"stage {self.name!r} has no foreach list; it takes no item")
        def sub(path: str) -> str:  # only "{item}" is filled: paths are not format strings
            return path.replace("{item}", item)

        return replace(self, item=item,
                       inputs=tuple(sub(p) for p in self.inputs),
                       outs=tuple(replace(o, path=sub(o.path)) for o in self.outs),
                       plots=tuple(replace(p, path=sub(p.path)) for p in self.plots),
                       untracked=tuple(sub(p) for p in self.untracked))

    def tracked(self) -> tuple[str, ...]:
        """The paths DVC tracks as the stage's outputs (outs, metrics, plots)."""
        return (*(o.path for o in self.outs), self.metrics, *(p.path for p in self.plots))

    def writes(self) -> tuple[str, ...]:
        """Every path the stage writes (outside ``.mofi/``); ``{item}`` in a foreach row."""
        return (*self.tracked(), *self.untracked)

    def reads(self, lookup: Callable[[str], Any]) -> tuple[str, ...]:
        """The paths the stage reads: those its ``param_inputs`` name (``lookup(dotted)``
        gives a params value), then its ``inputs``."""
        return (*(str(lookup(key)) for key in self.param_inputs), *self.inputs)

    def load(self) -> Callable[..., dict[str, Any]]:
        return _resolve(self.entry)

    def load_check(self) -> Callable[..., None] | None:
        return _resolve(self.check) if self.check else None


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class StageVerdict(RuntimeError):
    """The stage ran to the end and its complete result fails a check (the validation gate, the
    ingest reject limit). Unlike a crash, its outputs are kept (they are the evidence the message
    points to) and ``metrics`` are written; the stage still exits non-zero."""

    def __init__(self, message: str, metrics: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.metrics = metrics or {}


KB = "data/kb"  # the table, its memory-mapped copy and the indexes (mofi_core/kb/store.py)
MANIFEST = "data/ingest/manifest.parquet"
MODELS = "models"  # the control (models/baseline) and the candidates (models/<recipe>)
CANDIDATES = "train.recipes"  # the MOFI recipes trained, evaluated and registered

STAGES: tuple[StageSpec, ...] = (
    StageSpec("corpus", "mofi_core.demo.world:run", "corpus",
              "Materialise the embedded demo world: KB, corpus shards, ground truth, benchmark.",
              outs=(Out("data/corpus"), Out("data/truth"), Out("data/benchmark"))),
    StageSpec("kb", "mofi_core.kb.importer:run", "kb",
              "Read the knowledge base (demo, parquet/JSON Lines file, or a Wikidata dump), "
              "check its schema once, write data/kb: the table, its memory-mapped copy and the "
              "lookup indexes.",
              param_inputs=("kb.path",), outs=(Out("data/kb"),),
              # the gazetteer's phrases are tokenized by the ner pipeline's tokenizer
              check="mofi_core.kb.importer:check", also_params=("ner.spacy_model",)),
    StageSpec("ingest", "mofi_core.curate.ingest:run", "ingest",
              "Decode-check and normalise every sample; clean shards + manifest + rejects.",
              inputs=("data/corpus/shards",), outs=(Out("data/ingest", persist=True),),
              streamed=("data/corpus/shards",), check="mofi_core.curate.ingest:check"),
    StageSpec("decontam", "mofi_core.curate.decontam:run", "decontam",
              "Drop corpus images that are near-copies of evaluation images (perceptual hash): "
              "neither the control nor MOFI trains on them.",
              inputs=("data/ingest/shards", "data/benchmark"), outs=(Out("data/decontam"),)),
    StageSpec("ner", "mofi_core.curate.ner:run", "ner",
              "spaCy NER + KB gazetteer on alt-text; link mentions to KB candidates.",
              inputs=("data/ingest/parts", KB), outs=(Out("data/ner", persist=True),),
              check="mofi_core.curate.ner:check"),
    StageSpec("baseline", "mofi_core.train.run:run_baseline", "baseline",
              "Train the control: CLIP on raw alt-text (also the default scorer).",
              inputs=("data/ingest/shards", "data/decontam"),
              outs=(Out("models/baseline"),),
              plots=(Plot("plots/baseline_loss.csv", "step", "loss"),
                     Plot("plots/baseline_loss.png"))),
    StageSpec("score", "mofi_core.curate.score:run", "score",
              "CLIP similarity of every (image, candidate entity) pair.",
              inputs=("data/ingest/shards", "data/ner/parts", KB, "models/baseline"),
              outs=(Out("data/score", persist=True),), check="mofi_core.curate.score:check"),
    StageSpec("build", "mofi_core.curate.build:run", "build",
              "Filter rule + min images per entity -> Image-to-Entities dataset.",
              # data/ner/parts: the link scores top_k weighs in (build.link_weight)
              inputs=("data/ingest/shards", "data/score/parts", "data/ner/parts",
                      "data/decontam"),
              outs=(Out("data/i2e"),)),
    StageSpec("validate", "mofi_core.validate.suites:run", "validate",
              "great-expectations gate on the I2E dataset; failure stops the pipeline.",
              inputs=("data/i2e", KB, MANIFEST, "data/ner/mentions.parquet",
                      "data/score/scores.parquet"),
              outs=(Out("reports/validate.json", cache=False),),
              # HTML with run times in it: an MLflow artifact of the validate run, never a DVC
              # output (it would change dvc.lock on every run)
              untracked=("reports/data_docs",)),
    StageSpec("train", "mofi_core.train.run:run_train", "train",
              "Train one MOFI candidate on the I2E dataset: a DVC foreach stage, one instance "
              "(train@<recipe>, models/<recipe>) per recipe in train.recipes.",
              # reports/validate.json is the gate: train runs only after validate has passed
              inputs=("data/i2e", "reports/validate.json", KB),
              outs=(Out("models/{item}"),),
              plots=(Plot("plots/train_{item}_loss.csv", "step", "loss"),
                     Plot("plots/train_{item}_loss.png")),
              check="mofi_core.train.run:check_train", foreach="recipes", item_key="recipe"),
    StageSpec("evaluate", "mofi_core.evaluate.run:run", "evaluate",
              "GPR1200-protocol retrieval, zero-shot, linear probe: every candidate and the "
              "control CLIP on the same sets.",
              # models/: the control and every train.recipes candidate (models/<recipe>)
              inputs=(MODELS, "data/benchmark", KB),
              outs=(Out("reports/evaluate.md", cache=False),),
              plots=(Plot("reports/figures"),),
              check="mofi_core.evaluate.run:check", also_params=(CANDIDATES,)),
    StageSpec("report", "mofi_core.report:run", "report",
              "Label precision/recall vs the demo world's ground truth; MOFI vs CLIP report.",
              inputs=("data/truth", "data/corpus/world.json", MANIFEST, "data/ner", "data/score",
                      "data/i2e/labels.parquet",
                      "data/i2e/stats.json", "data/i2e/label_free.json", "data/decontam",
                      "metrics/evaluate.json", KB),
              outs=(Out("reports/quality.md", cache=False),
                    Out("reports/quality.json", cache=False)),
              plots=(Plot("reports/label_free.png"),),
              # the linking evidence rows re-rank the mentions as ner did
              also_params=("ner.max_candidates", "ner.link_weights")),
    StageSpec("register", "mofi_core.registry:run", "register",
              "Register every candidate in MLflow; the best becomes champion if it beats it.",
              inputs=(MODELS, "metrics/evaluate.json"),
              outs=(Out("reports/register.json", cache=False),),
              check="mofi_core.registry:check", metrics_in_git=False,
              also_params=(CANDIDATES,)),
)

BY_NAME: dict[str, StageSpec] = {s.name: s for s in STAGES}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in STAGES))


def _holds(out: str, path: str) -> bool:
    """``out`` (which may hold ``{item}``) is ``path``, inside it, or holds it."""
    if out.startswith(path + "/"):
        return True
    pattern = re.escape(out).replace(re.escape("{item}"), "[^/]+")
    return re.fullmatch(pattern + "(/.*)?", path) is not None


def producer_of(path: str) -> StageSpec | None:
    """The stage whose output holds ``path`` (None for external data)."""
    for spec in STAGES:
        if any(_holds(out, path) for out in spec.writes()):
            return spec
    return None


def expand(lookup: Callable[[str], Any]) -> tuple[StageSpec, ...]:
    """Every stage as DVC names it: a foreach stage once per value of its params list
    (``lookup(dotted)`` gives a params value, e.g. ``Params.value``)."""
    return tuple(one for spec in STAGES for one in (
        [spec.instance(str(v)) for v in lookup(f"{spec.section}.{spec.foreach}")]
        if spec.foreach else [spec]))


def get(name: str) -> StageSpec:
    """A stage by DVC name: ``train@multitask`` is the ``multitask`` instance of ``train``."""
    base, _, item = name.partition("@")
    if base not in BY_NAME:
        raise KeyError(f"no stage {base!r}; stages: {', '.join(BY_NAME)}")
    return BY_NAME[base].instance(item) if item else BY_NAME[base]
