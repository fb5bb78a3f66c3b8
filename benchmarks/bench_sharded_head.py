"""Per-rank memory of a large classification head: full on one process vs class-sharded.

    python benchmarks/bench_sharded_head.py [--classes 200000] [--dim 256] [--world 2]
        [--steps 1] [--json out.json]

The full variant is a ``LinearHead`` in one process; the sharded one is a ``ShardedHead`` on
``--world`` gloo processes on this host, each owning about 1/world of the rows. Every variant
runs in fresh spawned processes (so peak RSS is each process's own) and does ``--steps``
forward, backward and AdamW steps on one small random batch (64 x dim, one label per sample):
the first materialises the gradients and AdamW's two moment buffers, the next ones show that
the loss falls (at the paper's 2,000,000 entities: ``--classes 2000000 --steps 3``). Bytes are
exact tensor sizes: parameters, gradients and every tensor in the optimizer state. Peak RSS
also holds the interpreter and torch (reported as "start") plus transient buffers of the step,
so only the tensor counts are expected to scale as 1/world. All processes use one thread: on a
2-core host two ranks already fill the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import tempfile
import time
from pathlib import Path

MIB = 2 ** 20


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _measure(rank: int, world: int, port: int, classes: int, dim: int, batch: int,
             steps: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from mofi_core.models.heads import LinearHead
    from mofi_core.train.sharded_head import ShardedHead

    torch.set_num_threads(1)
    torch.manual_seed(rank)
    start_rss = _rss_mib()
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    head = ShardedHead(dim, classes) if world > 1 else LinearHead(dim, classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    idx = torch.randint(0, classes, (batch, 1))
    feats = torch.randn(batch, dim)
    tick = time.perf_counter()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        loss, _ = head.loss(feats, idx, torch.ones(batch, 1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    seconds = (time.perf_counter() - tick) / steps
    params = list(head.parameters())
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    result = {"rank": rank, "world": world, "rows": head.weight.shape[0], "seconds": seconds,
              "params": _tensor_bytes(params), "grads": _tensor_bytes(p.grad for p in params),
              "adamw": _tensor_bytes(state), "start_rss": start_rss, "peak_rss": _rss_mib(),
              "losses": losses}
    if world > 1:
        dist.destroy_process_group()
    (Path(out_dir) / f"w{world}r{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, args: argparse.Namespace, out: Path) -> list[dict]:
    import torch.multiprocessing as mp

    mp.spawn(_measure, nprocs=world, args=(world, _free_port(), args.classes, args.dim,
                                           args.batch, args.steps, str(out)))
    return [json.loads((out / f"w{world}r{r}.json").read_text()) for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="local batch per rank")
    ap.add_argument("--steps", type=int, default=1, help="steps on the same batch")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    if args.world < 2:
        ap.error("--world must be >= 2 to compare against the full head")

    with tempfile.TemporaryDirectory(prefix="bench-sharded-head-") as tmp:
        rows = _run(1, args, Path(tmp)) + _run(args.world, args, Path(tmp))
    print(f"head: {args.classes:,} classes x {args.dim} dim, fp32; AdamW; "
          f"local batch {args.batch}")
    print(f"{'variant':<18}{'rank':>5}{'rows':>11}{'params':>9}{'grads':>9}{'adamw':>9}"
          f"{'param+opt':>11}{'start RSS':>11}{'peak RSS':>10}{'growth':>8}{'step s':>8}"
          f"  loss first -> last")
    for r in rows:
        name = "full (world 1)" if r["world"] == 1 else f"sharded (world {r['world']})"
        print(f"{name:<18}{r['rank']:>5}{r['rows']:>11,}{r['params'] / MIB:>9.1f}"
              f"{r['grads'] / MIB:>9.1f}{r['adamw'] / MIB:>9.1f}"
              f"{(r['params'] + r['adamw']) / MIB:>11.1f}{r['start_rss']:>11.0f}"
              f"{r['peak_rss']:>10.0f}{r['peak_rss'] - r['start_rss']:>8.0f}{r['seconds']:>8.2f}"
              f"  {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}")
    print("(MiB; RSS = ru_maxrss of each process, growth = peak - start)")
    full = rows[0]["params"] + rows[0]["adamw"]
    worst = max(r["params"] + r["adamw"] for r in rows[1:])
    ratio, target = worst / full, 1 / args.world
    verdict = "OK" if abs(ratio - target) <= 0.05 * target + 1 / args.classes else "OFF"
    print(f"params + AdamW state, largest shard / full = {ratio:.4f} "
          f"(target ~1/N = {target:.4f}: {verdict})")
    if args.json:
        args.json.write_text(json.dumps({"classes": args.classes, "dim": args.dim,
                                         "steps": args.steps, "rows": rows,
                                         "shard_over_full": ratio}, indent=1) + "\n",
                             encoding="utf-8")


if __name__ == "__main__":
    main()
