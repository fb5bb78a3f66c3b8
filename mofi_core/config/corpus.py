"""Params section ``corpus``: the embedded demo world (:mod:`mofi_core.demo`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mofi_core.config.section import Section


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
    context: float = Field(0.0, ge=0, le=1, description=(
        "chance a caption naming the entity also says what it is (its description's words: "
        "what tells it from namesakes in a large KB)"))


class BenchmarkConfig(Section):
    seen_classes: int = Field(60, ge=1, description="benchmark classes from training entities")
    unseen_classes: int = Field(20, ge=0, description="benchmark classes never in the corpus")
    images_per_class: int = Field(10, ge=2, description="GPR1200 retrieval set: 10 per class")
    labelled_train: int = Field(10, ge=0, description="labelled split, per class")
    labelled_val: int = Field(5, ge=0)
    labelled_test: int = Field(10, ge=0)


class PaddingConfig(Section):
    """Wikidata-shaped entities around the depicted ones that no image shows
    (:mod:`mofi_core.demo.padding`): the KB at the paper's scale."""

    entities: int = Field(0, ge=0, description=(
        "never-depicted entities added to the KB (the paper links against 2,000,000); 0: the "
        "KB holds the depicted entities only"))
    homonym_rate: float = Field(0.01, ge=0, le=1, description=(
        "share of them named exactly like a depicted entity (its name or an alias)"))
    same_type_rate: float = Field(0.5, ge=0, le=1, description=(
        "share of those homonyms of the depicted entity's own type (the rest: a place, an "
        "organization, a product or a landmark of that name)"))
    sitelinks_exponent: float = Field(2.0, gt=1, le=5, description=(
        "popularity (sitelinks) of every entity: P(k) ~ k^-exponent, capped at 400"))
    depicted_popularity: Literal["size_biased", "same"] = Field("size_biased", description=(
        "a depicted entity's popularity: that law weighted by k (a popular entity is in more "
        "pictures), or the same law as every other entity's"))


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
    kb_padding: PaddingConfig = PaddingConfig()
