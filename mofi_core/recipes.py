"""The recipe table: what each training recipe reads, what a batch holds, what it produces.

Config validation, the data pipeline, recipe construction, the model folder and evaluation all
read a recipe's row instead of comparing its name: a new recipe is a row here plus, if it needs a
new loss, a class in :mod:`mofi_core.train.losses`.

- ``clip``: the paper's control, image <-> raw alt-text (contrastive);
- ``supervised``: image tower + classifier over the I2E entity vocabulary;
- ``contrastive``: image <-> entity text (name, optionally with its description);
- ``multitask``: MOFI, supervised + contrastive on one image tower.

This module imports nothing from the project, so every layer may read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ModelKind = Literal["clip", "classifier", "multitask"]
TextSource = Literal["", "alt_text", "entity", "configured"]


@dataclass(frozen=True)
class RecipeSpec:
    name: str
    data: Literal["ingest", "i2e"]  # raw alt-text pairs (the control) or the I2E dataset
    model_kind: ModelKind  # what the saved model folder holds
    batch: tuple[str, ...]  # the tensors of a batch, in order
    vocab: bool  # a classifier head over the entity vocabulary (vocab.json)
    text: TextSource  # the contrastive text; "configured" = train.text_source decides
    shardable_head: bool  # train.shard_head may split its head over torchrun ranks
    text_tower: bool  # the trained model has a text tower (zero-shot applies)

    def text_from(self, text_source: str) -> str:
        """Where this recipe's contrastive text comes from under ``train.text_source``:
        ``alt_text``, ``entity``, ``mix`` or ``""`` (no text)."""
        return text_source if self.text == "configured" else self.text

    def needs_kb(self, text_source: str = "entity") -> bool:
        """Whether training reads entity names/descriptions from the knowledge base."""
        return self.text_from(text_source) in ("entity", "mix")


IMAGE_TEXT = ("images", "tokens")
IMAGE_TARGET = ("images", "target_idx", "target_w")

RECIPES: dict[str, RecipeSpec] = {r.name: r for r in (
    RecipeSpec("clip", "ingest", "clip", IMAGE_TEXT, vocab=False, text="alt_text",
               shardable_head=False, text_tower=True),
    RecipeSpec("supervised", "i2e", "classifier", IMAGE_TARGET, vocab=True, text="",
               shardable_head=True, text_tower=False),
    RecipeSpec("contrastive", "i2e", "clip", IMAGE_TEXT, vocab=False, text="entity",
               shardable_head=False, text_tower=True),
    RecipeSpec("multitask", "i2e", "multitask", (*IMAGE_TARGET, "tokens"), vocab=True,
               text="configured", shardable_head=True, text_tower=True),
)}
CONTROL_RECIPES = tuple(n for n, r in RECIPES.items() if r.data == "ingest")
MOFI_RECIPES = tuple(n for n, r in RECIPES.items() if r.data == "i2e")
TEXT_TOWER_KINDS = tuple(sorted({r.model_kind for r in RECIPES.values() if r.text_tower}))


PAPER_MODEL = "multitask"  # the paper's final model: reports call it MOFI
CONTROL_MODEL = "baseline"  # the control's model folder and name in every report
# make paper only: the contrastive ablation on entity names alone, and the control trained for
# the MOFI line's total steps (its scorer CLIP + its own training: "same total compute")
NAME_ONLY_MODEL = "contrastive_name"
COMPUTE_CONTROL_MODEL = "baseline_compute"


def model_label(name: str) -> str:
    """How reports name a model: the paper's final recipe is MOFI, the others go by recipe."""
    return {PAPER_MODEL: f"MOFI ({PAPER_MODEL})",
            CONTROL_MODEL: "control CLIP (alt-text)",
            NAME_ONLY_MODEL: "contrastive, entity names only",
            COMPUTE_CONTROL_MODEL: "control CLIP, same total compute"}.get(name, name)


def recipe(name: str) -> RecipeSpec:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: one of {', '.join(RECIPES)}")
    return RECIPES[name]


def has_text_tower(model_kind: str) -> bool:
    return model_kind in TEXT_TOWER_KINDS
