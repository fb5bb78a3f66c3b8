"""The rank-sharded classification head: up to millions of classes split over torchrun ranks.

``ShardedHead`` splits the rows of the (C, D) weight across the ranks of a process group so that
weight, gradient and optimizer state shrink by the world size; its loss is the exact global
softmax of :mod:`mofi_core.models.heads` (same targets, same label smoothing, same margin),
computed with a few collectives on B-sized vectors instead of ever gathering the logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mofi_core.models.heads import (
    HEAD_KINDS,
    CosineHead,
    HeadKind,
    LinearHead,
    _check_smoothing,
    _local_targets,
    _margin_mask,
    best_target,
    check_targets,
)


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, end)`` owned by ``rank``: contiguous, sizes differing by at most one (the
    first ``num_classes % world`` ranks get the extra row). Every rank must own at least one
    class, so ``world > num_classes`` is an error rather than an empty shard: an empty shard
    would need special cases in every collective for a configuration nobody wants."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    if num_classes < world:
        raise ValueError(f"num_classes={num_classes} is smaller than world={world}: every rank "
                         "needs at least one class; use fewer ranks for the head")
    base, extra = divmod(num_classes, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


# --------------------------------------------------------------------------- collectives


def _dist_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: Tensor, op: Any, world: int) -> Tensor:
    if world > 1:
        dist.all_reduce(t, op=op)
    return t


def _all_gather(t: Tensor, world: int) -> Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0, in rank order."""
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


# --------------------------------------------------------------------------- sharded loss


class _ShardedSoftmaxCE(torch.autograd.Function):
    """Global soft-target cross-entropy over a class-sharded weight; see ``ShardedHead``.

    Inputs are this rank's features (B_local, D), its weight rows (C_local, D) and optional
    bias, plus targets already gathered to the global batch. Returns the global-batch mean loss
    and, as non-differentiable extras, each row's best plain (margin-free) logit in this shard
    and its global class id, for the top-1 metric.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, idx: Tensor,
                w: Tensor, cfg: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        xg = _all_gather(x, cfg["world"])
        z, plain = _block_logits(xg, weight, bias, idx, w, cfg)
        world = cfg["world"]
        row_max = _all_reduce(z.max(1).values, dist.ReduceOp.MAX, world)
        sums = torch.stack([(z - row_max[:, None]).exp().sum(1),
                            (z.gather(1, idx) * w).sum(1), z.sum(1)])
        sums = _all_reduce(sums, dist.ReduceOp.SUM, world)
        lse = row_max + sums[0].log()
        eps = cfg["smoothing"]
        per_sample = lse - (1 - eps) * sums[1] - eps * sums[2] / cfg["num_classes"]
        # the (B, C_local) logit block is the largest tensor here: recompute it in backward
        # rather than keep it alive between the passes
        ctx.save_for_backward(xg, weight, bias, idx, w, lse)
        ctx.cfg = cfg
        best_val, best_col = plain.max(1)
        ctx.mark_non_differentiable(best_val, best_col)
        return per_sample.mean(), best_val, best_col + cfg["start"]

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        xg, weight, bias, idx, w, lse = ctx.saved_tensors
        cfg = ctx.cfg
        z, _ = _block_logits(xg, weight, bias, idx, w, cfg)
        eps = cfg["smoothing"]
        target = torch.zeros_like(z).scatter_add_(1, idx, w)
        g = (z - lse[:, None]).exp() - (1 - eps) * target - eps / cfg["num_classes"]
        g = g * (grad_loss / z.shape[0])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gxg = _all_reduce(cfg["scale"] * g.to(weight.dtype) @ weight, dist.ReduceOp.SUM,
                              cfg["world"])
            b_local = gxg.shape[0] // cfg["world"]
            rank = cfg["rank"]
            gx = gxg[rank * b_local:(rank + 1) * b_local] * cfg["world"]
        if ctx.needs_input_grad[1]:
            gw = (cfg["scale"] * g.t().to(xg.dtype) @ xg).to(weight.dtype)
        if bias is not None and ctx.needs_input_grad[2]:
            gb = g.sum(0).to(bias.dtype)
        return gx, gw, gb, None, None, None


def _block_logits(xg: Tensor, weight: Tensor, bias: Tensor | None, idx: Tensor, w: Tensor,
                  cfg: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Margined logits used by the loss and plain logits used for prediction."""
    # softmax statistics in float32 even when the matmul ran in bf16 under autocast
    plain = cfg["scale"] * (xg @ weight.t()).float()
    if bias is not None:
        plain = plain + bias
    if not cfg["margin"]:
        return plain, plain
    shift = cfg["scale"] * cfg["margin"] * _margin_mask(idx, w, weight.shape[0])
    return plain - shift, plain


# --------------------------------------------------------------------------- sharded head


class ShardedHead(nn.Module):
    """A LinearHead or CosineHead whose class rows are split across the ranks of the default
    process group (torchrun's: every training process).

    Each rank owns rows ``shard_range(num_classes, rank, world)`` of the weight (and bias for
    ``kind="linear"``). Without an initialised process group it is simply the full head.
    ``loss`` gathers features and targets of all ranks (local batch sizes must be equal), builds
    the (B_global, C_local) logit block and the exact global softmax with collectives on
    B-sized vectors: MAX of the row maxima, SUM of the exp sums, the target terms and the logit
    sums (label smoothing).

    Gradient convention:
      * the returned loss is the mean over the GLOBAL batch and identical on every rank;
      * the gradient of each shard's weight/bias is exactly that slice of the full head's
        gradient on the global batch, so the head needs no gradient synchronisation: keep it
        OUT of DistributedDataParallel (wrap only the image tower);
      * the gradient w.r.t. ``feats_local`` is ``world`` times the full-batch gradient of those
        rows, so DDP's gradient AVERAGING over ranks gives the tower exactly the
        single-process full-batch gradient.

    The cosine kind uses a fixed ``scale``; its margin follows ``CosineHead``. Export with
    ``full_state_dict()`` (a collective: call it on every rank) or ``to_full_head()``.
    """

    def __init__(self, dim: int, num_classes: int, kind: HeadKind = "linear",
                 scale: float = 16.0, margin: float = 0.0) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"kind must be one of {HEAD_KINDS}, got {kind!r}")
        if kind == "linear" and margin:
            raise ValueError("margin is only defined for kind='cosine'")
        self.dim, self.num_classes, self.kind = dim, num_classes, kind
        self.scale, self.margin = float(scale), float(margin)
        self.rank, self.world = _dist_world()
        self.start, self.end = shard_range(num_classes, self.rank, self.world)
        rows = self.end - self.start
        if kind == "linear":
            self.weight = nn.Parameter(torch.empty(rows, dim))
            self.bias = nn.Parameter(torch.zeros(rows))
            nn.init.normal_(self.weight, std=dim ** -0.5)  # as LinearHead, in place
        else:
            self.weight = nn.Parameter(torch.randn(rows, dim))
            self.register_parameter("bias", None)

    def _cfg(self, smoothing: float) -> dict[str, Any]:
        scale = self.scale if self.kind == "cosine" else 1.0
        return {"world": self.world, "rank": self.rank,
                "start": self.start, "num_classes": self.num_classes, "scale": scale,
                "margin": self.margin, "smoothing": float(smoothing)}

    def _gather_targets(self, feats: Tensor, target_idx: Tensor,
                        target_w: Tensor) -> tuple[Tensor, Tensor]:
        """Global targets, right-padded to the widest K of any rank."""
        shape = torch.tensor([[feats.shape[0], target_idx.shape[1]]], device=feats.device)
        shapes = _all_gather(shape, self.world)
        if (shapes[:, 0] != shapes[0, 0]).any():
            raise ValueError(f"ShardedHead needs equal local batch sizes on every rank, got "
                             f"{shapes[:, 0].tolist()}; drop the last uneven batch "
                             "(drop_last=True) or pad it")
        pad = int(shapes[:, 1].max()) - target_idx.shape[1]
        idx = F.pad(target_idx, (0, pad), value=-1)
        w = F.pad(target_w, (0, pad), value=0.0)
        return _all_gather(idx, self.world), _all_gather(w, self.world)

    def loss(self, feats_local: Tensor, target_idx_local: Tensor, target_w_local: Tensor,
             label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
        check_targets(feats_local, target_idx_local, target_w_local)
        _check_smoothing(label_smoothing)
        idx_g, w_g = self._gather_targets(feats_local, target_idx_local, target_w_local)
        idx, w = _local_targets(idx_g, w_g, self.start, self.end - self.start)
        x, weight = feats_local, self.weight
        if self.kind == "cosine":
            # autograd differentiates the normalisations; the Function sees unit vectors
            x, weight = F.normalize(x, dim=-1), F.normalize(weight, dim=-1)
        loss, best_val, best_id = _ShardedSoftmaxCE.apply(
            x, weight, self.bias, idx, w.float(), self._cfg(label_smoothing))
        top1 = self._global_top1(best_val, best_id, best_target(idx_g, w_g))
        return loss, {"train_top1": top1}

    def _global_top1(self, best_val: Tensor, best_id: Tensor, truth: Tensor) -> Tensor:
        """Global argmax from each shard's (max, id): float64 holds ids exactly, and argmax over
        ranks takes the lowest rank (= lowest id) on ties, as ``argmax`` of full logits does."""
        pair = torch.stack([best_val.detach().double(), best_id.double()])[None]
        pairs = _all_gather(pair, self.world)  # (world, 2, B)
        winner = pairs[:, 0].argmax(0, keepdim=True)
        pred = pairs[:, 1].gather(0, winner).squeeze(0).long()
        return (pred == truth).float().mean()

    @torch.no_grad()
    def logits(self, feats_local: Tensor) -> Tensor:
        """This rank's (B, C_local) block of plain logits, columns ``start:end``."""
        if self.kind == "cosine":
            cos = F.linear(F.normalize(feats_local, dim=-1), F.normalize(self.weight, dim=-1))
            return self.scale * cos
        return F.linear(feats_local, self.weight, self.bias)

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, Tensor]:
        """Whole (C, D) weight (and (C,) bias) on every rank, keyed as LinearHead/CosineHead
        expect. Shards are padded to the largest size because all_gather needs equal shapes."""
        out = {"weight": self._gather_rows(self.weight)}
        if self.bias is not None:
            out["bias"] = self._gather_rows(self.bias)
        return out

    def _gather_rows(self, t: Tensor) -> Tensor:
        most = -(-self.num_classes // self.world)
        padded = F.pad(t.detach(), (0, 0) * (t.dim() - 1) + (0, most - t.shape[0]))
        parts = _all_gather(padded, self.world).split(most)
        sizes = [e - s for s, e in (shard_range(self.num_classes, r, self.world)
                                    for r in range(self.world))]
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).clone()

    @torch.no_grad()
    def load_full_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy this rank's rows out of a full head's state dict (no communication)."""
        weight = state["weight"]
        if tuple(weight.shape) != (self.num_classes, self.dim):
            raise ValueError(f"full weight must be {(self.num_classes, self.dim)}, got "
                             f"{tuple(weight.shape)}")
        self.weight.copy_(weight[self.start:self.end])
        if self.bias is not None:
            if "bias" not in state:
                raise ValueError("a linear ShardedHead needs 'bias' in the state dict")
            self.bias.copy_(state["bias"][self.start:self.end])

    def to_full_head(self) -> LinearHead | CosineHead:
        """An ordinary head holding the gathered weights (a collective: call on every rank)."""
        head: LinearHead | CosineHead
        if self.kind == "linear":
            head = LinearHead(self.dim, self.num_classes)
        else:
            head = CosineHead(self.dim, self.num_classes, scale=self.scale, margin=self.margin)
        head.load_state_dict(self.full_state_dict())
        return head.to(self.weight.device)
