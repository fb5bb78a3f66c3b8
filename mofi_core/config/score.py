"""Params section ``score``: CLIP similarity of each (image, candidate entity) pair."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mofi_core.config.section import Section


class ScoreConfig(Section):
    RUNTIME = ("device", "batch_size", "decode_workers")
    model: str = Field("baseline", description="'baseline' or an open_clip architecture name")
    pretrained: str | None = Field(None, description="open_clip tag or local checkpoint file")
    prompts: tuple[str, ...] = Field(("a photo of {name}.",), min_length=1, description=(
        "text templates averaged per entity; may use {name} and {description}"))
    homonym_prompts: tuple[str, ...] = Field(("a photo of {name}, {description}.",),
                                             min_length=1, description=(
        "the templates of an entity whose name another KB entity shares: with its description, "
        "so that namesakes never share a text (nor a score)"))
    null_samples: int = Field(16, ge=0, description="random non-candidate entities scored per "
                                                    "image (null distribution); 0 = none")
    decoys: Literal["uniform", "type"] = Field("uniform", description=(
        "where an image's decoys come from: the whole KB, or the KB entities of its "
        "candidates' types (harder decoys: on the demo world they read the precision low, "
        "docs/scale.md)"))
    null_pool: int = Field(4096, ge=1, description=(
        "KB sample the decoys come from (per type with decoys: type)"))
    seed: int = 0
    batch_size: int = Field(256, ge=1)
    device: str = "auto"
    decode_workers: int = Field(-1, ge=-1, description=(
        "DataLoader processes decoding images; -1 = auto: 0 on CPU (decoding in line beats "
        "competing with the forward's threads for the cores), up to 8 on a GPU"))

    @model_validator(mode="after")
    def _prompt(self) -> ScoreConfig:
        for p in self.homonym_prompts:
            if "{description}" not in p:
                raise ValueError(f"score.homonym_prompts: each must contain '{{description}}' "
                                 f"(what tells namesakes apart), got {p!r}")
        for p in (*self.prompts, *self.homonym_prompts):
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
