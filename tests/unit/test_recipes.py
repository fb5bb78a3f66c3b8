"""The recipe table drives the sample layout, the recipe built, the saved model and zero-shot."""

import io

import pytest
import torch
from PIL import Image

from mofi_core.config.train import TrainConfig
from mofi_core.kb.store import KBEntity, KnowledgeBase
from mofi_core.models.artifact import build_model, image_transform
from mofi_core.models.factory import tokenizer_for
from mofi_core.recipes import RECIPES, has_text_tower, recipe
from mofi_core.train.data import EntityTexts, SampleMaker
from mofi_core.train.losses import ClipRecipe, MultitaskRecipe, SupervisedRecipe, build_recipe
from mofi_core.train.run import _model_meta

CLASSES = ["Q1", "Q2"]
KB = KnowledgeBase([KBEntity("Q1", "Mount Fuji", (), "a volcano", "LOC"),
                    KBEntity("Q2", "Eiffel Tower", (), "a tower", "FAC")])


def _sample() -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, format="JPEG")
    return {"__key__": "000000001", "jpg": buf.getvalue(), "txt": b"my trip to fuji",
            "json": {"entity_ids": ["Q1", "Q2"], "scores": [0.5, 0.3]}}


def _cfg(name: str, **over) -> TrainConfig:
    return TrainConfig(recipe=name, model="mofi-tiny", steps=2, warmup_steps=1, **over)


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_sample_holds_exactly_the_rows_batch_layout(name):
    spec = RECIPES[name]
    cfg = _cfg(name)
    meta = _model_meta(cfg, CLASSES if spec.vocab else [])
    tok = tokenizer_for(meta.arch_config)
    maker = SampleMaker(spec=spec, transform=image_transform(meta, train=True), tokenizer=tok,
                        class_index={c: i for i, c in enumerate(CLASSES)},
                        entity_texts=EntityTexts(KB, tok, "{name}. {description}"))
    out = maker(_sample(), seed=3)
    assert len(out) == len(spec.batch)
    shapes = dict(zip(spec.batch, out, strict=True))
    assert shapes["images"].shape[0] == 3
    if spec.vocab:
        assert shapes["target_idx"].dtype == torch.long
        assert float(shapes["target_w"].sum()) == pytest.approx(1.0)
    if "tokens" in spec.batch:
        assert shapes["tokens"].dtype == torch.long and shapes["tokens"].dim() == 1


def test_the_text_comes_from_where_the_row_says():
    tok = tokenizer_for(_model_meta(_cfg("clip"), []).arch_config)
    texts = EntityTexts(KB, tok, "{name}")

    def text(name: str, source: str = "entity") -> torch.Tensor:
        cfg = _cfg(name, text_source=source)
        meta = _model_meta(cfg, CLASSES if cfg.spec.vocab else [])
        maker = SampleMaker(spec=cfg.spec, transform=image_transform(meta), tokenizer=tok,
                            class_index={c: i for i, c in enumerate(CLASSES)},
                            entity_texts=texts, text_source=source)
        return maker(_sample(), seed=0)[-1]

    alt = tok(["my trip to fuji"])[0]
    entity = {tok([n])[0].tolist().__str__() for n in ("Mount Fuji", "Eiffel Tower")}
    assert torch.equal(text("clip"), alt)  # the control reads the raw alt-text
    assert str(text("contrastive").tolist()) in entity
    assert str(text("multitask", "entity").tolist()) in entity
    assert torch.equal(text("multitask", "alt_text"), alt)


def test_kb_texts_are_needed_only_where_the_text_is_the_entitys():
    assert not recipe("clip").needs_kb() and not recipe("supervised").needs_kb()
    assert recipe("contrastive").needs_kb()
    assert recipe("multitask").needs_kb("entity") and recipe("multitask").needs_kb("mix")
    assert not recipe("multitask").needs_kb("alt_text")


@pytest.mark.parametrize("name, kind", [("clip", ClipRecipe), ("contrastive", ClipRecipe),
                                        ("supervised", SupervisedRecipe),
                                        ("multitask", MultitaskRecipe)])
def test_the_row_decides_the_recipe_built_and_the_model_saved(name, kind):
    spec = RECIPES[name]
    cfg = _cfg(name, shard_head=True)
    meta = _model_meta(cfg, CLASSES if spec.vocab else [])
    torch.manual_seed(0)
    built = build_recipe(cfg, meta.arch_config, len(meta.classes))
    assert type(built) is kind
    assert meta.kind == spec.model_kind and bool(meta.classes) == spec.vocab
    model = build_model(meta)
    assert has_text_tower(meta.kind) == spec.text_tower
    assert hasattr(model if meta.kind == "clip" else getattr(model, "clip", model),
                   "encode_text") == spec.text_tower
    # shard_head only shards a head the row allows to be sharded (here: world of one)
    assert getattr(built, "sharded", False) == spec.shardable_head


def test_an_unknown_recipe_names_the_choices():
    with pytest.raises(ValueError, match="clip, supervised, contrastive, multitask"):
        recipe("moco")
