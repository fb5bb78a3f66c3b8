"""A model on disk: ``model.safetensors`` (weights) + ``model.json`` (everything to rebuild it).

Loading never unpickles: weights are safetensors, metadata is JSON, and the architecture config is
stored inline so a folder loads without the registry that created it. A stage loads a folder once
as a :class:`LoadedModel` (model on its device, metadata, eval transform, tokenizer) and passes it
whole to whatever embeds images or texts with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mofi_core.io.atomic import atomic_dir
from mofi_core.models.factory import ImageClassifier, MultiTaskModel, build_clip, tokenizer_for
from mofi_core.recipes import TEXT_TOWER_KINDS, has_text_tower

FORMAT = "mofi-model/1"
WEIGHTS, META = "model.safetensors", "model.json"


@dataclass(frozen=True)
class ModelMeta:
    kind: str  # "clip" (towers), "classifier" (image tower + head) or "multitask" (both)
    arch: str
    arch_config: dict[str, Any]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    recipe: str
    classes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT


def default_meta(kind: str, arch: str, cfg: dict[str, Any], recipe: str,
                 classes: tuple[str, ...] = (), extra: dict[str, Any] | None = None
                 ) -> ModelMeta:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    size = cfg["vision_cfg"]["image_size"]
    return ModelMeta(kind=kind, arch=arch, arch_config=cfg, recipe=recipe, classes=classes,
                     extra=dict(extra or {}),
                     image_size=size if isinstance(size, int) else size[0],
                     mean=tuple(OPENAI_DATASET_MEAN), std=tuple(OPENAI_DATASET_STD))


def build_model(meta: ModelMeta) -> nn.Module:
    if meta.kind == "clip":
        return build_clip(meta.arch_config)
    head = meta.extra.get("head", "linear"), meta.extra.get("head_scale", 16.0)
    if meta.kind == "classifier":
        return ImageClassifier(meta.arch_config, len(meta.classes), *head)
    if meta.kind == "multitask":
        return MultiTaskModel(meta.arch_config, len(meta.classes), *head)
    raise ValueError(f"unknown model kind {meta.kind!r}")


def save_model(folder: Path | str, model: nn.Module, meta: ModelMeta) -> None:
    """Publish the folder atomically."""
    with atomic_dir(folder) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(asdict(meta), indent=2, sort_keys=True),
                                encoding="utf-8")


def read_meta(folder: Path | str) -> ModelMeta:
    path = Path(folder) / META
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} is not a mofi model folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a {type(raw).__name__}, not a model description object")
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: format {raw.get('format')!r}, this code reads {FORMAT!r}")
    try:
        raw["mean"], raw["std"], raw["classes"] = (tuple(raw[k])
                                                   for k in ("mean", "std", "classes"))
        return ModelMeta(**raw)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a complete {FORMAT} description ({err})") from None


def check_model_folder(folder: Path | str, what: str) -> ModelMeta:
    """The folder holds a model this code can load (metadata readable, weights present); the
    error names ``what`` (e.g. 'the baseline CLIP (models/baseline)')."""
    try:
        meta = read_meta(folder)
    except (FileNotFoundError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{what}: {err}") from None
    if not (Path(folder) / WEIGHTS).is_file():
        raise FileNotFoundError(f"{what}: {Path(folder) / WEIGHTS} is missing; re-run the stage "
                                "that trains it")
    return meta


def load_model(folder: Path | str) -> tuple[nn.Module, ModelMeta]:
    meta = read_meta(folder)
    model = build_model(meta)
    state = load_file(str(Path(folder) / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not match {meta.arch} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), meta


def image_transform(meta: ModelMeta, train: bool = False):
    import open_clip

    return open_clip.image_transform(meta.image_size, is_train=train, mean=meta.mean,
                                     std=meta.std)


@dataclass(frozen=True)
class LoadedModel:
    """A model folder loaded once: the network in eval mode on ``device``, its metadata, the eval
    image transform and, for models with a text tower, the tokenizer."""

    path: Path
    model: nn.Module
    meta: ModelMeta
    device: torch.device
    transform: Callable[[Any], torch.Tensor]
    tokenizer: Any | None

    @classmethod
    def load(cls, folder: Path | str, device: torch.device) -> LoadedModel:
        model, meta = load_model(folder)
        tokenizer = tokenizer_for(meta.arch_config) if has_text_tower(meta.kind) else None
        return cls(Path(folder), model.to(device), meta, device, image_transform(meta),
                   tokenizer)

    @property
    def has_text_tower(self) -> bool:
        return self.tokenizer is not None

    @property
    def text_model(self) -> nn.Module:
        """The CLIP whose ``encode_text`` embeds texts (the towers of a multi-task model)."""
        if not self.has_text_tower:
            raise ValueError(f"{self.path} holds a {self.meta.kind!r} model: it has no text "
                             f"tower (needs one of {TEXT_TOWER_KINDS})")
        return self.model if self.meta.kind == "clip" else self.model.clip
