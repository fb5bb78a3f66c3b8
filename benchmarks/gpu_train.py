"""Training throughput and MFU of a recipe on one GPU (bf16 autocast), compile off and on.

    python benchmarks/gpu_train.py --arch ViT-B-16 --steps 200 --out results/
    python benchmarks/gpu_train.py --arch mofi-tiny --steps 3 --device cpu   # smoke test

Synthetic tensors (the input pipeline is measured elsewhere) through ``train_loop``'s own
machinery. FLOPs per step are counted once with ``torch.utils.flop_counter`` on a real
forward + backward of the model (not estimated from a formula); MFU = achieved FLOP/s divided by
``--peak-tflops`` (default: 989, H100/H200 dense bf16). Writes ``gpu_train.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_train import MemoryBatches, synthetic_batch


def count_flops(recipe, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss, _ = recipe.loss(batch)
        loss.backward()
    recipe.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(args, compile_: bool) -> dict:
    from mofi_core.config.train import TrainConfig
    from mofi_core.models.factory import arch_config
    from mofi_core.train.distributed import DistEnv
    from mofi_core.train.loop import train_loop
    from mofi_core.train.losses import build_recipe

    device = torch.device(args.device)
    arch = arch_config(args.arch)
    size = arch["vision_cfg"]["image_size"]
    batch = tuple(t.to(device) for t in synthetic_batch(
        args.recipe, args.batch_size, size, args.classes,
        arch["text_cfg"].get("context_length", 77)))
    cfg = TrainConfig(recipe=args.recipe, model=args.arch, steps=args.warmup + args.steps,
                      batch_size=args.batch_size, warmup_steps=1, compile=compile_,
                      log_every=args.warmup + args.steps, device=args.device)
    torch.manual_seed(0)
    recipe = build_recipe(cfg, arch, args.classes)
    recipe.model.to(device)
    flops = count_flops(recipe, batch)
    env = DistEnv(rank=0, world=1, local_rank=0, device=device)
    # warm-up (and compilation) inside a first loop call, timing in a second one
    train_loop(recipe, MemoryBatches(batch), cfg.model_copy(update={"steps": args.warmup,
                                                                    "log_every": 1}),
               env, lambda s, r: None)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train_loop(recipe, MemoryBatches(batch), cfg.model_copy(update={"steps": args.steps}),
               env, lambda s, r: None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
    per_s = args.steps * args.batch_size / secs
    achieved = flops * args.steps / secs
    return {"arch": args.arch, "recipe": args.recipe, "compile": compile_,
            "batch_size": args.batch_size, "steps": args.steps, "seconds": secs,
            "images_per_s": per_s, "gflops_per_image": flops / args.batch_size / 1e9,
            "achieved_tflops": achieved / 1e12, "mfu": achieved / (args.peak_tflops * 1e12),
            "peak_memory_gb": (torch.cuda.max_memory_allocated() / 2**30
                               if device.type == "cuda" else None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--recipe", default="multitask",
                    choices=["supervised", "contrastive", "multitask"])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--classes", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--compile", choices=["off", "on", "both"], default="both")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows = []
    for mode in modes:
        row = measure(args, mode)
        rows.append(row)
        print(f"{row['arch']} {row['recipe']} compile={mode}: {row['images_per_s']:,.0f} "
              f"images/s, {row['achieved_tflops']:.1f} TFLOP/s, MFU {row['mfu']:.1%}, "
              f"{row['gflops_per_image']:.1f} GFLOP/image (fwd+bwd)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_train.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
