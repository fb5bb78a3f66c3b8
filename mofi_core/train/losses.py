"""Training recipes: what is trained and with which loss.

A recipe owns ``model`` (every trained parameter; what checkpoints hold), ``net`` (the part that
is replicated on every rank and wrapped in DDP by the loop) and ``loss(batch)`` returning the
total loss and its named terms. Heads that are sharded across ranks live outside ``net``; a
replicated head outside ``net`` has its gradients averaged by the loop (``replicated_extra``).

- ``clip``: image <-> raw alt-text, CLIP loss with learnable temperature (the paper's control);
- ``supervised``: image tower -> embedding -> classifier over the entity vocabulary;
- ``contrastive``: image <-> entity text (name, optionally with its description);
- ``multitask``: MOFI: weighted sum of the two, one shared image tower.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mofi_core.config.train import TrainConfig
from mofi_core.models.factory import build_clip, cuts_after_end_token, encode_text_cut
from mofi_core.models.heads import make_head as full_head
from mofi_core.train import sharded_head as H

MAX_LOGIT_SCALE = 4.6052  # ln(100): CLIP's cap on the learnable temperature


class ClipFeatures(nn.Module):
    """CLIP towers returning (raw image embedding, unit text embedding, temperature) — the
    raw image embedding feeds a classifier head; its normalised copy the contrastive loss.

    The text tower runs on the batch cut after its longest text's end token where that cannot
    change the result (a causal mask, pooling at the end token): the longest of 64 demo
    alt-texts averages 27 tokens of mofi-tiny's 32, entity names far fewer of open_clip's 77."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.cut = cuts_after_end_token(clip)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img = self.clip.encode_image(images)
        txt = encode_text_cut(self.clip, tokens) if self.cut else self.clip.encode_text(tokens)
        return img, F.normalize(txt, dim=-1), self.clip.logit_scale.exp()


class Recipe:
    name = "base"

    def __init__(self, model: nn.Module, net: nn.Module) -> None:
        self.model, self.net = model, net
        self.forward: Callable = net  # replaced by the DDP wrapper when world > 1
        self.rank, self.world = 0, 1

    def distribute(self, wrap: Callable[[nn.Module], nn.Module], rank: int, world: int) -> None:
        self.forward, self.rank, self.world = wrap(self.net), rank, world

    def is_sharded(self, name: str) -> bool:
        return False

    def replicated_extra(self) -> list[nn.Parameter]:
        return []

    def after_step(self) -> None:
        pass

    def loss(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


def _clamp_temperature(clip: nn.Module) -> None:
    with torch.no_grad():
        clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, rank: int, world: int
              ) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch (features gathered with gradients across ranks;
    each rank scores its own images/texts against everyone's)."""
    from open_clip.loss import ClipLoss

    loss = ClipLoss(local_loss=world > 1, gather_with_grad=world > 1, rank=rank,
                    world_size=world)
    return loss(F.normalize(img, dim=-1), txt, scale)


class ClipRecipe(Recipe):
    """Contrastive image <-> text; the batch is (images, text tokens). Used as the paper's
    control (text = raw alt-text) and as ``contrastive`` (text = the entity's text)."""

    def __init__(self, clip: nn.Module, name: str = "clip") -> None:
        super().__init__(clip, ClipFeatures(clip))
        self.clip, self.name = clip, name

    def loss(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        images, tokens = batch
        img, txt, scale = self.forward(images, tokens)
        loss = clip_loss(img, txt, scale, self.rank, self.world)
        return loss, {f"loss_{self.name}": loss.detach(), "logit_scale": scale.detach()}

    def after_step(self) -> None:
        _clamp_temperature(self.clip)


def make_head(kind: str, dim: int, num_classes: int, sharded: bool, scale: float,
              margin: float) -> nn.Module:
    if sharded:
        return H.ShardedHead(dim, num_classes, kind=kind, scale=scale, margin=margin)
    return full_head(kind, dim, num_classes, scale, margin)


class _HeadMixin:
    head: nn.Module
    sharded: bool

    def is_sharded(self, name: str) -> bool:
        return self.sharded and name.startswith("head.")

    def replicated_extra(self) -> list[nn.Parameter]:
        return [] if self.sharded else list(self.head.parameters())


class SupervisedRecipe(_HeadMixin, Recipe):
    """Soft-target cross-entropy over the entity vocabulary; batch = (images, target indices,
    target weights)."""

    name = "supervised"

    def __init__(self, tower: nn.Module, head: nn.Module, sharded: bool,
                 label_smoothing: float = 0.0) -> None:
        model = nn.Module()
        model.visual, model.head = tower, head
        super().__init__(model, tower)
        self.head, self.sharded, self.label_smoothing = head, sharded, label_smoothing

    def loss(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        images, idx, weights = batch
        loss, extra = self.head.loss(self.forward(images).float(), idx, weights,
                                     label_smoothing=self.label_smoothing)
        return loss, {"loss_supervised": loss.detach(), **extra}


class MultitaskRecipe(_HeadMixin, Recipe):
    """MOFI: ``w_sup * supervised + w_con * contrastive`` on one shared image tower; batch =
    (images, target indices, target weights, text tokens)."""

    name = "multitask"

    def __init__(self, clip: nn.Module, head: nn.Module, sharded: bool,
                 weights: tuple[float, float], label_smoothing: float = 0.0) -> None:
        model = nn.Module()
        model.clip, model.head = clip, head
        super().__init__(model, ClipFeatures(clip))
        self.clip, self.head, self.sharded = clip, head, sharded
        self.weights, self.label_smoothing = weights, label_smoothing

    def loss(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        images, idx, target_w, tokens = batch
        img, txt, scale = self.forward(images, tokens)
        sup, extra = self.head.loss(img.float(), idx, target_w,
                                    label_smoothing=self.label_smoothing)
        con = clip_loss(img, txt, scale, self.rank, self.world)
        total = self.weights[0] * sup + self.weights[1] * con
        return total, {"loss_supervised": sup.detach(), "loss_contrastive": con.detach(),
                       "logit_scale": scale.detach(), **extra}

    def after_step(self) -> None:
        _clamp_temperature(self.clip)


def build_recipe(cfg: TrainConfig, arch: dict, num_classes: int) -> Recipe:
    """A fresh recipe for ``cfg.recipe`` (call after seeding: the weights are initialised here).
    The recipe table's row decides the shape: no vocabulary -> contrastive only; a vocabulary
    and no text -> supervised; both -> multi-task."""
    spec = cfg.spec
    clip = build_clip(arch)
    if cfg.pretrained:  # the towers start from the file's weights; a head starts fresh
        from mofi_core.models.pretrained import load_into, read_checkpoint

        load_into(clip, read_checkpoint(cfg.pretrained), cfg.pretrained)
    if not spec.vocab:
        return ClipRecipe(clip, name=spec.name)
    sharded = cfg.shard_head and spec.shardable_head
    h = make_head(cfg.head, arch["embed_dim"], num_classes, sharded, cfg.head_scale,
                  cfg.head_margin)
    if not spec.text:
        return SupervisedRecipe(clip.visual, h, sharded, cfg.label_smoothing)
    return MultitaskRecipe(clip, h, sharded, cfg.loss_weights, cfg.label_smoothing)
