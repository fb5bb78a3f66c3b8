"""Params section ``evaluate``: retrieval, zero-shot and linear probe of every model."""

from __future__ import annotations

from pydantic import Field

from mofi_core.config.section import Section


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
