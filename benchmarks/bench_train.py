"""Training loop throughput vs a bare forward/backward/step loop (same model, batch, optimizer).

    python benchmarks/bench_train.py [--arch mofi-tiny] [--batch-size 64] [--steps 30]
    python benchmarks/bench_train.py --recipe multitask --real-data

``bare``: ``zero_grad``, the recipe's loss, ``backward``, fused AdamW ``step`` on tensors made
beforehand — nothing else. ``loop``: ``train_loop`` itself (lr schedule, gradient clipping by
the global norm, temperature clamp, logging every 10 steps) fed the same tensors from memory:
the cost of the loop's machinery. Target: loop >= 0.90x bare. With ``--real-data`` a third row
feeds the loop from webdataset shards of a generated demo world (decode + augmentation in one
DataLoader worker): on a 2-core CPU that worker competes with the model for the cores, so this
row shows how input-bound the host is rather than the loop's overhead.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from ratio import interleaved_medians, ratio_result, write_result


class MemoryBatches:
    """The loop's data interface over tensors already in memory."""

    def __init__(self, batch: tuple[torch.Tensor, ...]) -> None:
        self.batch = batch

    def restore(self, position) -> None:
        pass

    def position(self) -> dict:
        return {}

    def __iter__(self):
        while True:
            yield self.batch


def synthetic_batch(recipe: str, n: int, size: int, classes: int, ctx: int
                    ) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g)
    idx = torch.randint(0, classes, (n, 1), generator=g)
    idx = torch.cat([idx, torch.full((n, 7), -1)], 1)
    w = torch.zeros(n, 8)
    w[:, 0] = 1.0
    tokens = torch.randint(1, 1000, (n, ctx), generator=g)
    return {"clip": (images, tokens), "contrastive": (images, tokens),
            "supervised": (images, idx, w), "multitask": (images, idx, w, tokens)}[recipe]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mofi-tiny")
    ap.add_argument("--recipe", default="supervised",
                    choices=["clip", "supervised", "contrastive", "multitask"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--steps", type=int, default=30, help="steps per timed call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--real-data", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()

    from mofi_core.config.train import TrainConfig
    from mofi_core.models.factory import arch_config
    from mofi_core.train.distributed import DistEnv
    from mofi_core.train.loop import make_optimizer, train_loop
    from mofi_core.train.losses import build_recipe

    arch = arch_config(args.arch)
    size = arch["vision_cfg"]["image_size"]
    ctx = arch["text_cfg"].get("context_length", 77)
    batch = synthetic_batch(args.recipe, args.batch_size, size, args.classes, ctx)
    env = DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    cfg = TrainConfig(recipe=args.recipe, model=args.arch, steps=args.steps,
                      batch_size=args.batch_size, warmup_steps=1)
    torch.manual_seed(0)
    recipe = build_recipe(cfg, arch, args.classes)
    recipe.model.train()
    opt = make_optimizer(recipe.model, cfg, env.device)

    def bare() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=True)
            loss, _ = recipe.loss(batch)
            loss.backward()
            opt.step()
        return args.steps * args.batch_size / (time.perf_counter() - start)

    def loop() -> float:
        start = time.perf_counter()
        train_loop(recipe, MemoryBatches(batch), cfg, env, lambda s, r: None)
        return args.steps * args.batch_size / (time.perf_counter() - start)

    mb, ml = interleaved_medians(bare, loop, args.repeats)
    print(f"model {args.arch} ({size}px), recipe {args.recipe}, batch {args.batch_size}, "
          f"{args.steps} steps per call, median of {args.repeats}, "
          f"{torch.get_num_threads()} threads")
    print(f"bare fwd/bwd/step on tensors: {mb:8,.1f} images/s")
    print(f"train_loop, same tensors:     {ml:8,.1f} images/s -> ratio {ml / mb:.2f} "
          f"(target >= 0.90)")
    extra = {}
    if args.real_data:
        extra["real_data_images_per_s"] = real_data(args, env)
        print(f"clip control from webdataset shards: {extra['real_data_images_per_s']:8,.1f} "
              "images/s (decode, augmentation, tokenizer in 1 worker; compare with a --recipe "
              "clip bare row: input-bound on a small CPU host)")
    write_result(args.json, ratio_result(
        "train", "images/s", ml, mb, 0.90, args.repeats,
        "bare zero_grad/loss/backward/step on the same tensors", arch=args.arch,
        recipe=args.recipe, batch_size=args.batch_size, steps_per_call=args.steps, **extra))


def real_data(args, env) -> float:
    """The CLIP control recipe fed from the ingest shards of a generated demo world; the
    loop's own images/s (model build and world generation excluded)."""
    from mofi_core.config.corpus import BenchmarkConfig, CorpusConfig
    from mofi_core.config.ingest import IngestConfig
    from mofi_core.config.train import BaselineConfig
    from mofi_core.curate.ingest import ingest
    from mofi_core.demo.world import generate_world
    from mofi_core.io.sources import expand_sources
    from mofi_core.train.run import train_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_world(CorpusConfig(num_entities=args.classes, images_per_entity=8,
                                    samples_per_shard=400, benchmark=BenchmarkConfig(
                                        seen_classes=1, unseen_classes=0, images_per_class=2,
                                        labelled_train=0, labelled_val=0, labelled_test=0)),
                       root / "corpus", root / "truth", root / "bench")
        ingest(expand_sources(str(root / "corpus" / "shards"), root), root / "ingest",
               IngestConfig())
        cfg = BaselineConfig(model=args.arch, steps=args.steps * 2, batch_size=args.batch_size,
                             warmup_steps=1, num_workers=1, log_every=args.steps * 2)
        hist = train_model(root / "ingest", root / "m", cfg, lambda s, r: None)
        return hist[-1]["images_per_s"]


if __name__ == "__main__":
    main()
