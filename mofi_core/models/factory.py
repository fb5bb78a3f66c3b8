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

from mofi_core.models.heads import make_head

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


def cuts_after_end_token(clip: nn.Module) -> bool:
    """Whether padding after the end token can be cut without changing ``encode_text``: an
    open_clip CLIP (its own ``encode_text``, not an override) with a causal mask, pooling at
    the end token. Position i then only attends to positions <= i, so the pooled output never
    sees what comes after the end token."""
    from open_clip.model import CLIP

    return (type(clip).encode_text is CLIP.encode_text
            and getattr(clip, "attn_mask", None) is not None
            and getattr(clip, "text_pool_type", None) == "argmax")


def encode_text_cut(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP.encode_text on the first n positions only, n = one past the last end token (call
    only where :func:`cuts_after_end_token` holds). Used by scoring and by training: the cut
    positions never reach the pooled output, so they get no gradient either way."""
    ends = tokens.argmax(dim=-1)  # the end token has the largest id in open_clip's vocabulary
    n = int(ends.max()) + 1
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens[:, :n]).to(cast) + clip.positional_embedding[:n].to(cast)
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:n, :n]))
    x = x[torch.arange(x.shape[0], device=x.device), ends]
    if clip.text_projection is None:
        return x
    if isinstance(clip.text_projection, nn.Linear):
        return clip.text_projection(x)
    return x @ clip.text_projection


@torch.no_grad()
def encode_texts(clip: nn.Module, tokenizer, texts: list[str], device: torch.device,
                 batch_size: int = 256) -> torch.Tensor:
    """Unit-norm text embeddings (float32, on ``device``, rows in the order of ``texts``).

    Texts are batched by token length and each batch is cut after its longest text's end
    token: entity names and prompts use ~10 of a context of 77, and the text tower's cost
    falls with the length. The result equals ``encode_text`` on the padded tokens up to float
    rounding (tested); models where the cut could change it get plain ``encode_text``."""
    if not texts:
        return torch.empty(0, 0, device=device)
    tokens = tokenizer(texts)
    cut = cuts_after_end_token(clip)
    order = torch.argsort(tokens.argmax(dim=-1), stable=True) if cut else torch.arange(len(texts))
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokens[order[i:i + batch_size]].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            emb = encode_text_cut(clip, batch) if cut else clip.encode_text(batch)
        out.append(torch.nn.functional.normalize(emb.float(), dim=-1))
    emb = torch.cat(out)
    return torch.empty_like(emb).index_copy_(0, order.to(device), emb)
