"""Training recipes: a model plus the loss it is trained with. ``loss(batch)`` returns the total
loss and a dict of its named terms (logged per term)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClipRecipe:
    """Contrastive image <-> raw alt-text with a learnable temperature (open_clip's ClipLoss)."""

    name = "clip"

    def __init__(self, model: nn.Module) -> None:
        from open_clip.loss import ClipLoss

        self.model = model
        self._loss = ClipLoss()

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        images, tokens = batch
        img, txt, scale = self.model(images, tokens)
        loss = self._loss(img, txt, scale)
        return loss, {"loss_clip": loss.detach(), "logit_scale": scale.detach()}

    def after_step(self) -> None:
        # as in CLIP: keep the temperature in a sane range (scale <= 100)
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, 4.6052)


class SupervisedRecipe:
    """Softmax cross-entropy over the entity vocabulary with soft (multi-label) targets."""

    name = "supervised"

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0) -> None:
        self.model = model
        self.label_smoothing = label_smoothing

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        images, targets = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == targets.argmax(1)).float().mean()
        return loss, {"loss_supervised": loss.detach(), "train_top1": acc.detach()}

    def after_step(self) -> None:
        pass
