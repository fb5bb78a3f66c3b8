"""Entry points of the ``baseline`` and ``train`` stages: data + recipe + loop -> model folder.

The same function runs in a plain ``mofi train`` (a world of one) and in each process of a
``torchrun`` launch: rank 0 logs and publishes the model, every rank writes its share of the
checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mofi_core import tracking
from mofi_core.config.train import TrainConfig
from mofi_core.curate.decontam import read_dropped
from mofi_core.io import s3
from mofi_core.io.hashing import file_sha256, fingerprint
from mofi_core.io.shards import list_shards
from mofi_core.kb.store import KnowledgeBase
from mofi_core.models.artifact import default_meta, image_transform, save_model
from mofi_core.models.factory import arch_config, tokenizer_for
from mofi_core.train import distributed
from mofi_core.train.checkpoint import RemoteMirror
from mofi_core.train.data import Batches, EntityTexts, SampleMaker, ShardStream
from mofi_core.train.loop import train_loop
from mofi_core.train.losses import Recipe, build_recipe
from mofi_core.validate.gate import require_passed

if TYPE_CHECKING:
    from mofi_core.context import StageContext

LogFn = Callable[[int, dict[str, float]], None]
TEXT_TEMPLATES = {"name": "{name}", "name_description": "{name}. {description}"}


def read_vocab(i2e_dir: Path | str) -> list[str]:
    if s3.is_s3(i2e_dir):
        url = f"{str(i2e_dir).rstrip('/')}/vocab.json"
        return json.loads(s3.read_bytes(url).decode("utf-8"))["classes"]
    path = Path(i2e_dir) / "vocab.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the build stage first")
    return json.loads(path.read_text(encoding="utf-8"))["classes"]


def _shards_and_identity(data_dir: Path | str, kb_path: Path | None
                         ) -> tuple[list[str], list]:
    """The shard paths/URLs to stream and what identifies the data (for resume)."""
    if s3.is_s3(data_dir):
        base = str(data_dir).rstrip("/")
        shards = s3.glob(f"{base}/shards/*.tar")
        if not shards:
            raise FileNotFoundError(f"no .tar shards under {base}/shards/ (train.data)")
        ident = [s3.identity(u) for u in shards]
        if s3.exists(f"{base}/vocab.json"):
            ident.append(s3.identity(f"{base}/vocab.json"))
        if kb_path is not None and kb_path.is_file():
            ident.append(file_sha256(kb_path))
        return shards, ident
    local = list_shards(Path(data_dir) / "shards")
    extra = [p for p in (Path(data_dir) / "vocab.json", kb_path)
             if p is not None and p.is_file()]
    return [str(p) for p in local], _data_identity(local, extra)


def _setup(cfg: TrainConfig, env: distributed.DistEnv) -> None:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    cores = os.cpu_count() or 1
    torch.set_num_threads(cfg.threads or max(1, cores // env.world))


def _sample_maker(cfg: TrainConfig, meta, classes: list[str], kb_path: Path | None
                  ) -> SampleMaker:
    tokenizer = tokenizer_for(meta.arch_config)
    texts = None
    if cfg.spec.needs_kb(cfg.text_source):
        if kb_path is None or not kb_path.is_dir():
            raise FileNotFoundError(f"train.recipe={cfg.recipe} needs the KB for entity texts; "
                                    f"{kb_path} is missing")
        texts = EntityTexts(KnowledgeBase.open(kb_path), tokenizer,
                            TEXT_TEMPLATES[cfg.entity_text])
    return SampleMaker(spec=cfg.spec, transform=image_transform(meta, train=True),
                       tokenizer=tokenizer, class_index={c: i for i, c in enumerate(classes)},
                       entity_texts=texts, max_labels=cfg.max_labels, weighting=cfg.multi_label,
                       text_source=cfg.text_source, alt_text_prob=cfg.alt_text_prob)


def _model_meta(cfg: TrainConfig, classes: list[str]):
    arch = arch_config(cfg.model)
    spec = cfg.spec
    extra = {"head": cfg.head, "head_scale": cfg.head_scale} if spec.vocab else {}
    return default_meta(spec.model_kind, cfg.model, arch, recipe=cfg.recipe,
                        classes=tuple(classes) if spec.vocab else (), extra=extra)


def _export(recipe: Recipe, cfg: TrainConfig, meta, out_dir: Path, env) -> None:
    """Publish the trained model (rank 0); a sharded head is gathered first (all ranks)."""
    sharded = cfg.shard_head and cfg.spec.shardable_head
    full = recipe.head.full_state_dict() if sharded else {}  # a collective: every rank
    if not env.is_main:
        return
    state = {k: v.detach().cpu() for k, v in recipe.model.state_dict().items()
             if not (sharded and k.startswith("head."))}
    state.update({f"head.{k}": v.detach().cpu() for k, v in full.items()})
    from mofi_core.models.artifact import build_model

    model = build_model(meta)
    model.load_state_dict(state)  # same parameter names: the recipe mirrors the model layout
    save_model(out_dir, model, meta)


def _data_identity(shards: list[Path], extra: list[Path]) -> list:
    return [[p.name, p.stat().st_size] for p in shards] + [file_sha256(p) for p in extra]


def train_model(data_dir: Path | str, out_dir: Path, cfg: TrainConfig, on_log: LogFn,
                kb_path: Path | None = None, ckpt_root: Path | None = None,
                remote_ckpt: str = "", exclude: frozenset[str] = frozenset()) -> list[dict]:
    """Train ``cfg.recipe`` on the shards in ``data_dir/shards`` (ingest shards for ``clip``,
    I2E shards otherwise) and publish the model to ``out_dir``. With ``ckpt_root``, resume
    from the newest checkpoint written with the same params and data; with ``remote_ckpt``
    (``s3://...``) checkpoints are also kept there and resumed from there."""
    env = distributed.init(cfg.device)
    try:
        _setup(cfg, env)
        classes = read_vocab(data_dir) if cfg.spec.vocab else []
        meta = _model_meta(cfg, classes)
        recipe = build_recipe(cfg, meta.arch_config, len(classes))
        needs_kb = cfg.spec.needs_kb(cfg.text_source)
        shards, data_identity = _shards_and_identity(data_dir, kb_path if needs_kb else None)
        from mofi_core.train import memory

        if exclude:  # another training set: another identity for its checkpoints
            data_identity = fingerprint(data_identity, "exclude", *sorted(exclude))
        if cfg.pretrained:  # other starting weights under the same path: another run
            data_identity = fingerprint(data_identity, "init", file_sha256(Path(cfg.pretrained)))
        maker = _sample_maker(cfg, meta, classes, kb_path)
        # a small local set is decoded once and batched from memory; anything else streams
        augment, why = memory.choose(cfg.data_in_memory, str(data_dir), shards, maker,
                                     cfg.resampled)
        held = memory.load(shards, maker, augment, None if cfg.data_in_memory is True
                           else memory.AUTO_LIMIT_BYTES, exclude) \
            if augment is not None else None
        if held is not None:
            batches = memory.MemoryBatches(held, maker, augment, cfg.batch_size, cfg.seed,
                                           env.rank, env.world, env.device)
            note = f"{len(held)} samples held in memory ({held.nbytes / 2**20:.0f} MB decoded)"
        else:
            batches = Batches(ShardStream(shards, maker, cfg.batch_size, cfg.shuffle_buffer,
                                          cfg.seed, env.rank, env.world, cfg.resampled,
                                          exclude=exclude),
                              cfg.num_workers)
            note = f"streaming {len(shards)} shards ({why or 'decoded images over the limit'})"
        if env.is_main:
            print(f"train: {note}", flush=True)
        # the loader is part of the run's identity: its checkpoints hold its kind of position
        fp = fingerprint("train", cfg.result_key(), env.world, data_identity,
                         *(["memory"] if held is not None else []))
        run_dir = mirror = None
        if ckpt_root is not None:
            run_dir = ckpt_root / fp
            if env.is_main:
                _forget_other_runs(ckpt_root, fp)
            if remote_ckpt:
                mirror = RemoteMirror(f"{remote_ckpt.rstrip('/')}/{fp}", cfg.keep_checkpoints)
        history = train_loop(recipe, batches, cfg, env, on_log, run_dir, fp, mirror)
        _export(recipe, cfg, meta, out_dir, env)
        env.barrier()
        return history
    finally:
        distributed.shutdown(env)


def _forget_other_runs(root: Path, keep: str) -> None:
    """Checkpoints of other params/data can never be resumed by this run: remove them."""
    import shutil

    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name != keep:
                shutil.rmtree(p)


def _write_history(path: Path, history: list[dict]) -> None:
    """Loss curve as CSV for ``dvc plots`` (step column + one column per logged value)."""
    from mofi_core.io.atomic import atomic_path

    # a fixed column order: rows restored from a checkpoint come back with sorted keys
    cols = ["step", *sorted(k for k in history[0] if k != "step")]
    with atomic_path(path) as tmp:
        lines = [",".join(cols)] + [",".join(f"{row[c]:.6g}" for c in cols) for row in history]
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


MACHINE_DEPENDENT = ("images_per_s", "memory_mb")


def _stage(data_dir: Path, out_dir: Path, cfg: TrainConfig, ctx: StageContext) -> dict:
    """``baseline`` or one ``train@<recipe>``: checkpoints under ``.mofi/state/<address>``,
    the loss curve as ``plots/<stage>[_<recipe>]_loss.{csv,png}``."""
    lay = ctx.layout
    name, spec = ctx.spec.address, ctx.spec
    plot = f"{spec.name}_{spec.item}" if spec.item else spec.name
    remote = ""
    if cfg.checkpoint_dir.startswith("s3://"):  # local staging + a copy in S3
        remote = f"{cfg.checkpoint_dir.rstrip('/')}/{name}"
        ckpt = lay.state(name) / "checkpoints"
    else:
        ckpt = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else lay.state(name) / "checkpoints"
    # the control trains on the ingested corpus less decontam's near-copies of evaluation
    # images (build already left them out of the I2E set the candidates train on)
    exclude = read_dropped(lay.decontam) if spec.name == "baseline" else frozenset()
    history = train_model(cfg.data or data_dir, out_dir, cfg,
                          lambda step, row: ctx.tracker.log_metrics(
        {k: v for k, v in row.items() if k != "step"}, step=step), kb_path=lay.kb,
        ckpt_root=ckpt, remote_ckpt=remote, exclude=exclude)
    if tracking.is_main_process():
        from mofi_core.evaluate.plots import loss_curve

        # speed and memory depend on the machine: keep them out of the (DVC-tracked) plot file
        rows = [{k: v for k, v in r.items() if k not in MACHINE_DEPENDENT} for r in history]
        _write_history(lay.plot(f"{plot}_loss.csv"), rows)
        loss_curve(rows, lay.plot(f"{plot}_loss.png"), f"{name}: {cfg.recipe} ({cfg.model})")
        ctx.artifacts += [lay.plot(f"{plot}_loss.csv"), lay.plot(f"{plot}_loss.png")]
        if spec.name == "train" and ctx.tracker.run_id is not None:
            _log_lineage(Path(cfg.data) if cfg.data else data_dir, out_dir, ctx)
    return {"final_loss": history[-1]["loss"], "steps": cfg.steps}


def _log_lineage(data: Path, model_dir: Path, ctx: StageContext) -> None:
    """The I2E set as this run's training dataset (digest: its DVC hash) and the trained model
    logged into this run, where ``register`` finds it by its bytes and registers it from."""
    from mofi_core.serving.logged import log_encoder

    if "://" not in str(data):  # an s3:// I2E set is named by its manifest, not re-hashed here
        ctx.tracker.log_dataset(data, "i2e", "training")
    info = log_encoder(model_dir)
    print(f"train: model logged to MLflow as {info.model_uri} (run {ctx.tracker.run_id})")


def check_train(cfg: TrainConfig, ctx: StageContext) -> None:
    """Before anything is trained: the validation gate holds for the data to be read, and the
    vocabulary and KB texts the recipe needs are there."""
    data = cfg.data or ctx.layout.i2e
    require_passed(ctx.layout.reports / "validate.json", data)
    if cfg.spec.vocab:
        read_vocab(data)
    if cfg.spec.needs_kb(cfg.text_source):
        KnowledgeBase.open(ctx.layout.kb)


def run_baseline(cfg: TrainConfig, ctx: StageContext) -> dict:
    """Stage ``baseline``: CLIP on raw alt-text (the paper's control, and the default scorer)."""
    return _stage(ctx.layout.ingest, ctx.layout.baseline_model, cfg, ctx)


def run_train(cfg: TrainConfig, ctx: StageContext) -> dict:
    """Stage ``train@<recipe>``: one candidate recipe on the I2E dataset -> models/<recipe>."""
    return _stage(ctx.layout.i2e, ctx.layout.model(cfg.recipe), cfg, ctx)
