"""Entry points of the ``baseline`` and ``train`` stages: data + model + recipe -> model folder."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from mofi_core.config import TrainConfig
from mofi_core.io.shards import list_shards
from mofi_core.models.artifact import build_model, default_meta, image_transform, save_model
from mofi_core.models.factory import arch_config, tokenizer_for
from mofi_core.train import data
from mofi_core.train.loop import train_loop
from mofi_core.train.recipes import ClipRecipe, SupervisedRecipe

LogFn = Callable[[int, dict[str, float]], None]


def _setup(cfg: TrainConfig) -> None:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)


def train_clip(ingest_dir: Path, out_dir: Path, cfg: TrainConfig, on_log: LogFn) -> list[dict]:
    """The paper's control: CLIP on the raw alt-text of every ingested sample."""
    _setup(cfg)
    arch = arch_config(cfg.model)
    meta = default_meta("clip", cfg.model, arch, recipe="clip")
    model = build_model(meta)
    ds = data.clip_dataset(list_shards(ingest_dir / "shards"), image_transform(meta, train=True),
                           tokenizer_for(arch), cfg.batch_size, cfg.shuffle_buffer, cfg.seed)
    history = train_loop(ClipRecipe(model), data.loader(ds, cfg.num_workers), cfg, on_log)
    save_model(out_dir, model.cpu(), meta)
    return history


def read_vocab(i2e_dir: Path) -> list[str]:
    path = i2e_dir / "vocab.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the build stage first")
    return json.loads(path.read_text(encoding="utf-8"))["classes"]


def train_supervised(i2e_dir: Path, out_dir: Path, cfg: TrainConfig, on_log: LogFn) -> list[dict]:
    """MOFI supervised recipe: classification over the I2E entity vocabulary."""
    _setup(cfg)
    classes = read_vocab(i2e_dir)
    arch = arch_config(cfg.model)
    meta = default_meta("classifier", cfg.model, arch, recipe=cfg.recipe, classes=tuple(classes))
    model = build_model(meta)
    ds = data.supervised_dataset(list_shards(i2e_dir / "shards"),
                                 image_transform(meta, train=True),
                                 {c: i for i, c in enumerate(classes)}, cfg.batch_size,
                                 cfg.shuffle_buffer, cfg.seed)
    recipe = SupervisedRecipe(model, cfg.label_smoothing)
    history = train_loop(recipe, data.loader(ds, cfg.num_workers), cfg, on_log)
    save_model(out_dir, model.cpu(), meta)
    return history


def _write_history(path: Path, history: list[dict]) -> None:
    """Loss curve as CSV for ``dvc plots`` (step column + one column per logged value)."""
    from mofi_core.io.atomic import atomic_path

    cols = list(history[0])
    with atomic_path(path) as tmp:
        lines = [",".join(cols)] + [",".join(f"{row[c]:.6g}" for c in cols) for row in history]
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _stage(name: str, train_fn, data_dir: Path, out_dir: Path, cfg: TrainConfig, ctx) -> dict:
    history = train_fn(data_dir, out_dir, cfg, lambda step, row: ctx.tracker.log_metrics(
        {k: v for k, v in row.items() if k != "step"}, step=step))
    # images/s depends on the machine: keep it out of the (DVC-tracked) plot file
    _write_history(ctx.layout.plot(f"{name}_loss.csv"),
                   [{k: v for k, v in r.items() if k != "images_per_s"} for r in history])
    ctx.artifacts.append(ctx.layout.plot(f"{name}_loss.csv"))
    last = history[-1]
    return {"final_loss": last["loss"], "steps": cfg.steps}


def run_baseline(cfg: TrainConfig, ctx) -> dict:
    """Stage ``baseline``: CLIP on raw alt-text (the paper's control, and the default scorer)."""
    return _stage("baseline", train_clip, ctx.layout.ingest, ctx.layout.baseline_model, cfg, ctx)


def run_train(cfg: TrainConfig, ctx) -> dict:
    """Stage ``train``: the MOFI recipe on the I2E dataset."""
    return _stage("train", train_supervised, ctx.layout.i2e, ctx.layout.mofi_model, cfg, ctx)
