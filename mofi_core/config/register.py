"""Params section ``register``: the MLflow registry and the champion rule."""

from __future__ import annotations

from pydantic import Field

from mofi_core.config.section import Section


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
