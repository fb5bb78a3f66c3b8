"""Params section ``score``: CLIP similarity of each (image, candidate entity) pair."""

from __future__ import annotations

from pydantic import Field, model_validator

from mofi_core.config.section import Section


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
