"""Classification heads over the entity vocabulary, and their soft-target loss.

Targets come in a sparse, padded form so that a dense batch x classes target never exists:
``target_idx`` (B, K) long class ids padded with -1, and ``target_w`` (B, K) float weights,
0 at padding, each row summing to 1. Per sample the loss is the soft-target cross-entropy
``logsumexp(z) - sum_k w_k z[y_k]``; label smoothing ``eps`` mixes in the uniform target,
``(1 - eps) * that + eps * (logsumexp(z) - mean(z))``. The batch loss is the mean over samples.

``LinearHead`` and ``CosineHead`` hold the whole (C, D) weight: what a saved model holds and
what inference needs. The rank-sharded head and its collectives are training code
(:mod:`mofi_core.train.sharded_head`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HeadKind = Literal["linear", "cosine"]
HEAD_KINDS = ("linear", "cosine")


# --------------------------------------------------------------------------- targets, metrics


def check_targets(feats: Tensor, target_idx: Tensor, target_w: Tensor) -> None:
    """Shape and dtype checks only: value checks (row sums, index range) would force a device
    sync every step."""
    if feats.dim() != 2:
        raise ValueError(f"feats must be (B, D), got shape {tuple(feats.shape)}")
    if target_idx.dim() != 2 or target_idx.shape != target_w.shape:
        raise ValueError(f"target_idx and target_w must both be (B, K), got "
                         f"{tuple(target_idx.shape)} and {tuple(target_w.shape)}")
    if target_idx.shape[0] != feats.shape[0]:
        raise ValueError(f"targets have {target_idx.shape[0]} rows but feats have "
                         f"{feats.shape[0]}")
    if target_idx.dtype != torch.long or not target_w.is_floating_point():
        raise ValueError(f"target_idx must be int64 and target_w floating point, got "
                         f"{target_idx.dtype} and {target_w.dtype}")


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


def _local_targets(target_idx: Tensor, target_w: Tensor, start: int,
                   size: int) -> tuple[Tensor, Tensor]:
    """Indices relative to the column block ``[start, start + size)``, clamped into it, and the
    weights with every padded or out-of-block entry zeroed, so that gathers and scatters with
    them are safe and those entries contribute nothing."""
    local = target_idx - start
    inside = (target_idx >= 0) & (local >= 0) & (local < size)
    return local.clamp(0, size - 1), torch.where(inside, target_w, torch.zeros_like(target_w))


def _margin_mask(idx: Tensor, w: Tensor, size: int) -> Tensor:
    """(B, size) float mask, 1 at every class with positive target weight. ``amax`` rather than a
    plain scatter so that a zero-weight (padding) entry sharing an index with a positive one
    cannot overwrite it."""
    out = torch.zeros(idx.shape[0], size, dtype=w.dtype, device=w.device)
    return out.scatter_reduce(1, idx, (w > 0).to(w.dtype), reduce="amax")


def soft_cross_entropy(logits: Tensor, target_idx: Tensor, target_w: Tensor,
                       label_smoothing: float = 0.0) -> Tensor:
    """Batch-mean soft-target cross-entropy of full (B, C) logits against sparse targets."""
    _check_smoothing(label_smoothing)
    idx, w = _local_targets(target_idx, target_w, 0, logits.shape[1])
    lse = torch.logsumexp(logits, dim=1)
    per_sample = lse - (logits.gather(1, idx) * w).sum(1)
    if label_smoothing > 0:
        per_sample = (1 - label_smoothing) * per_sample + label_smoothing * (
            lse - logits.mean(1))
    return per_sample.mean()


def best_target(target_idx: Tensor, target_w: Tensor) -> Tensor:
    """The highest-weight class of each row (the first one on ties)."""
    return target_idx.gather(1, target_w.argmax(1, keepdim=True)).squeeze(1)


def top1_accuracy(logits: Tensor, target_idx: Tensor, target_w: Tensor) -> Tensor:
    """Fraction of rows whose argmax is the highest-weight target (detached)."""
    hit = logits.detach().argmax(1) == best_target(target_idx, target_w)
    return hit.float().mean()


# --------------------------------------------------------------------------- full heads


class LinearHead(nn.Module):
    """``logits = feats @ weight.T + bias`` over all ``num_classes`` rows."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.normal_(self.weight, std=dim ** -0.5)

    def logits(self, feats: Tensor) -> Tensor:
        return F.linear(feats, self.weight, self.bias)

    def loss(self, feats: Tensor, target_idx: Tensor, target_w: Tensor,
             label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
        check_targets(feats, target_idx, target_w)
        z = self.logits(feats)
        loss = soft_cross_entropy(z, target_idx, target_w, label_smoothing)
        return loss, {"train_top1": top1_accuracy(z, target_idx, target_w)}


class CosineHead(nn.Module):
    """``logits = scale * cos(feats, weight rows)``. In ``loss`` an additive CosFace margin
    ``m`` is subtracted from the cosine of every class with positive target weight before
    scaling (the full margin on each positive class, whatever its weight); ``logits`` never
    applies it, so predictions and exported heads are margin-free. ``learn_scale`` keeps
    ``log(scale)`` as a parameter, which keeps the scale positive under any update."""

    def __init__(self, dim: int, num_classes: int, scale: float = 16.0, margin: float = 0.0,
                 learn_scale: bool = False) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.weight = nn.Parameter(torch.randn(num_classes, dim))
        self.margin = float(margin)
        self.learn_scale = learn_scale
        if learn_scale:
            self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        else:
            self._scale = float(scale)

    @property
    def scale(self) -> Tensor | float:
        return self.log_scale.exp() if self.learn_scale else self._scale

    def cosine(self, feats: Tensor) -> Tensor:
        return F.linear(F.normalize(feats, dim=-1), F.normalize(self.weight, dim=-1))

    def logits(self, feats: Tensor) -> Tensor:
        return self.scale * self.cosine(feats)

    def loss(self, feats: Tensor, target_idx: Tensor, target_w: Tensor,
             label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
        check_targets(feats, target_idx, target_w)
        cos = self.cosine(feats)
        margined = cos
        if self.margin:
            idx, w = _local_targets(target_idx, target_w, 0, cos.shape[1])
            margined = cos - self.margin * _margin_mask(idx, w, cos.shape[1])
        loss = soft_cross_entropy(self.scale * margined, target_idx, target_w, label_smoothing)
        metrics = {"train_top1": top1_accuracy(cos, target_idx, target_w),
                   "scale": torch.as_tensor(self.scale).detach().clone()}
        return loss, metrics


def make_head(kind: str, dim: int, num_classes: int, scale: float = 16.0,
              margin: float = 0.0) -> nn.Module:
    """A full (unsharded) head; ``margin`` only shapes the cosine head's training loss."""
    if kind == "cosine":
        return CosineHead(dim, num_classes, scale=scale, margin=margin)
    if kind == "linear":
        return LinearHead(dim, num_classes)
    raise ValueError(f"unknown head {kind!r}: linear or cosine")
