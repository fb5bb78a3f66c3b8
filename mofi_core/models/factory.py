"""Build towers by architecture name.

Small architectures ship as open_clip-style JSON files in ``models/configs`` (the CPU demo and
tests use them); every other name is looked up in open_clip's own registry (``ViT-B-16``...).
Model code here holds no distributed, logging or checkpoint logic.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_DIR = Path(__file__).parent / "configs"


def list_models() -> list[str]:
    import open_clip

    return sorted({p.stem for p in CONFIG_DIR.glob("*.json")} | set(open_clip.list_models()))


def arch_config(name: str) -> dict[str, Any]:
    """The open_clip model config for ``name`` (a dict with embed_dim, vision_cfg, text_cfg)."""
    local = CONFIG_DIR / f"{name}.json"
    if local.is_file():
        return json.loads(local.read_text(encoding="utf-8"))
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown model architecture {name!r}: use one of mofi's "
                         f"{sorted(p.stem for p in CONFIG_DIR.glob('*.json'))} or an open_clip "
                         "name (open_clip.list_models())")
    return copy.deepcopy(cfg)


def build_clip(cfg: dict[str, Any]) -> nn.Module:
    from open_clip.model import CLIP

    return CLIP(**cfg)


def tokenizer_for(cfg: dict[str, Any]):
    """open_clip's BPE tokenizer (shipped with the package: no download) at the model's length."""
    from open_clip.tokenizer import SimpleTokenizer

    if cfg["text_cfg"].get("hf_tokenizer_name"):
        raise ValueError("architectures with a Hugging Face tokenizer need a model hub; "
                         "choose an architecture using open_clip's built-in tokenizer")
    return SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))


def make_head(kind: str, dim: int, num_classes: int, scale: float = 16.0,
              margin: float = 0.0) -> nn.Module:
    """A full (unsharded) head; ``margin`` only shapes the cosine head's training loss."""
    from mofi_core.train.heads import CosineHead, LinearHead

    if kind == "cosine":
        return CosineHead(dim, num_classes, scale=scale, margin=margin)
    if kind == "linear":
        return LinearHead(dim, num_classes)
    raise ValueError(f"unknown head {kind!r}: linear or cosine")


class ImageClassifier(nn.Module):
    """Image tower -> embedding -> classifier head over the entity vocabulary."""

    def __init__(self, cfg: dict[str, Any], num_classes: int, head: str = "linear",
                 scale: float = 16.0) -> None:
        super().__init__()
        self.visual = build_clip(cfg).visual
        self.head = make_head(head, cfg["embed_dim"], num_classes, scale)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head.logits(self.encode_image(images))


class MultiTaskModel(nn.Module):
    """MOFI's multi-task model: CLIP towers + a classifier head on the image embedding."""

    def __init__(self, cfg: dict[str, Any], num_classes: int, head: str = "linear",
                 scale: float = 16.0) -> None:
        super().__init__()
        self.clip = build_clip(cfg)
        self.head = make_head(head, cfg["embed_dim"], num_classes, scale)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_image(images, normalize=normalize)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head.logits(self.encode_image(images))
