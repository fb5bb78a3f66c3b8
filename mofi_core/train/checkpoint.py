"""Training checkpoints: safetensors for tensors, JSON for everything else; never a pickle.

Layout of one checkpoint (``<dir>/step-000120/``)::

    replicated.safetensors    parameters every rank holds (the towers) + their optimizer state
    rank-00000.safetensors    this rank's own tensors: its head shard + optimizer state, RNG state
    rank-00000.json           this rank's loop state (data position, history) and Python RNG
    state.json                step, world size, fingerprint of the run's params (written last)

Every rank writes its files into ``step-000120.tmp/``; after a barrier rank 0 writes
``state.json`` and renames the folder, so a checkpoint is either complete under its final name or
not there. ``latest`` ignores ``.tmp`` leftovers of a killed run (and ``prune`` removes them).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mofi_core.io.atomic import write_json
from mofi_core.train.distributed import DistEnv

STEP_DIR = re.compile(r"^step-(\d{9})$")
FORMAT = "mofi-checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:09d}"


def latest(root: Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``root`` (``None`` when there is none)."""
    if not root.is_dir():
        return None
    found = [Checkpoint(p, int(m.group(1))) for p in root.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / "state.json").is_file()]
    return max(found, key=lambda c: c.step, default=None)


def latest_any(root: Path, min_step: int = 0) -> Checkpoint | None:
    """The newest complete checkpoint in any run folder under ``root`` (tests, tooling)."""
    if not root.is_dir():
        return None
    found = [c for p in root.iterdir() if p.is_dir() and (c := latest(p)) is not None
             and c.step >= min_step]
    return max(found, key=lambda c: c.step, default=None)


def prune(root: Path, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints; remove older ones and ``.tmp`` leftovers."""
    if not root.is_dir():
        return
    complete = sorted((p for p in root.iterdir() if STEP_DIR.match(p.name)), key=lambda p: p.name)
    for p in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(p)
    for p in root.glob("step-*.tmp"):
        shutil.rmtree(p)


def _named_params(module: torch.nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in module.named_parameters()}


def optimizer_tensors(opt: torch.optim.Optimizer, module: torch.nn.Module,
                      keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """Optimizer state keyed by parameter *name* (``optim/<param>/<slot>``), for the
    parameters ``keep`` selects: positions in ``param_groups`` are not a stable identity."""
    names = _named_params(module)
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            if not keep(name):
                continue
            for slot, value in opt.state.get(p, {}).items():
                out[f"optim/{name}/{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, module: torch.nn.Module,
                           tensors: dict[str, torch.Tensor], path: Path) -> None:
    by_name = {name: p for name, p in module.named_parameters()}
    for key, value in tensors.items():
        if not key.startswith("optim/"):
            continue
        name, slot = key[len("optim/"):].rsplit("/", 1)
        if name not in by_name:
            raise ValueError(f"{path}: optimizer state for unknown parameter {name!r}; the "
                             "checkpoint belongs to another model (delete it or change "
                             "train.checkpoint_dir)")
        p = by_name[name]
        opt.state[p][slot] = value.to(p.device) if slot != "step" else value.to(
            p.device if value.is_cuda else "cpu")


def _param_tensors(module: torch.nn.Module, keep: Callable[[str], bool]
                   ) -> dict[str, torch.Tensor]:
    """CPU copies of the selected parameters only (a rank never copies the whole model)."""
    return {f"param/{n}": p.detach().cpu().contiguous()
            for n, p in module.named_parameters() if keep(n)}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["rng/cuda"] = torch.cuda.get_rng_state()
    return out


def _python_rng() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    return {"python": [version, list(state), gauss],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def _set_python_rng(raw: dict[str, Any]) -> None:
    version, state, gauss = raw["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = raw["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


@dataclass
class TrainState:
    """What a checkpoint restores: model + optimizer tensors and the loop's own position."""

    step: int
    loop: dict[str, Any]  # the loop's own JSON state: data position, history so far


class Trainable(Protocol):
    """What a checkpoint holds of a recipe: every trained parameter, and which are sharded."""

    model: torch.nn.Module

    def is_sharded(self, name: str) -> bool: ...


def save(root: Path, step: int, trained: Trainable, opt: torch.optim.Optimizer,
         loop: dict[str, Any], env: DistEnv, fingerprint: str,
         mirror: RemoteMirror | None = None) -> Path:
    """Write checkpoint ``step`` (all ranks call this); returns its final folder. With a
    ``mirror``, ``root`` may be local to each node: the complete checkpoint is the remote one."""
    module, is_sharded, barrier = trained.model, trained.is_sharded, env.barrier
    rank, world = env.rank, env.world
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    tmp.mkdir(parents=True, exist_ok=True)  # a node that does not share rank 0's folder
    mine = _param_tensors(module, is_sharded)
    mine.update(optimizer_tensors(opt, module, is_sharded))
    mine.update(_rng_tensors())
    save_file(mine, str(tmp / f"rank-{rank:05d}.safetensors"))
    write_json(tmp / f"rank-{rank:05d}.json", {"loop": loop, "rng": _python_rng()})
    if rank == 0:
        shared = _param_tensors(module, lambda n: not is_sharded(n))
        shared.update({f"buffer/{n}": b.detach().cpu().contiguous()
                       for n, b in module.named_buffers()})
        shared.update(optimizer_tensors(opt, module, lambda n: not is_sharded(n)))
        save_file(shared, str(tmp / "replicated.safetensors"))
    if mirror is not None:
        mirror.push_rank(tmp, step, rank)
    barrier()
    if rank == 0:
        write_json(tmp / "state.json", {"format": FORMAT, "step": step, "world": world,
                                        "fingerprint": fingerprint})
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if mirror is not None:
            mirror.finish(final)
    barrier()
    if mirror is not None and rank != 0 and env.local_rank == 0 and tmp.exists():
        shutil.rmtree(tmp)  # this node's own folder: its part is safe in the remote copy
    return final


def load(ckpt: Checkpoint, module: torch.nn.Module, opt: torch.optim.Optimizer, env: DistEnv,
         fingerprint: str) -> TrainState:
    """Restore ``module``, ``opt`` and the RNGs from ``ckpt``; refuse a checkpoint written by a
    different world size or different training params (it would not continue the same run)."""
    rank, world = env.rank, env.world
    state = json.loads((ckpt.path / "state.json").read_text(encoding="utf-8"))
    if state.get("format") != FORMAT:
        raise ValueError(f"{ckpt.path}: format {state.get('format')!r}, expected {FORMAT!r}")
    if state["world"] != world:
        raise ValueError(f"{ckpt.path} was written by {state['world']} processes, this run has "
                         f"{world}: resume with the same number of processes or move the "
                         "checkpoint folder away to start over")
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"{ckpt.path} was written with different training params; move the "
                         "checkpoint folder away (or restore the params) to start over")
    tensors = load_file(str(ckpt.path / "replicated.safetensors"))
    tensors.update(load_file(str(ckpt.path / f"rank-{rank:05d}.safetensors")))
    _load_module(module, tensors, ckpt.path)
    load_optimizer_tensors(opt, module, tensors, ckpt.path)
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    own = json.loads((ckpt.path / f"rank-{rank:05d}.json").read_text(encoding="utf-8"))
    _set_python_rng(own["rng"])
    return TrainState(step=state["step"], loop=own["loop"])


def _load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = {n for n, _ in module.named_parameters()}
    got = {k[len("param/"):] for k in tensors if k.startswith("param/")}
    if expected != got:
        raise ValueError(f"{path}: parameters do not match the model (missing "
                         f"{sorted(expected - got)[:3]}, unexpected {sorted(got - expected)[:3]})")
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(tensors[f"param/{name}"])
        for name, b in module.named_buffers():
            if f"buffer/{name}" in tensors:
                b.copy_(tensors[f"buffer/{name}"])


class RemoteMirror:
    """Keeps a run's checkpoints under an ``s3://`` prefix, so that they outlive the machines
    and the nodes of a multi-node run need no shared folder.

    While saving, every rank uploads its own files (rank 0 also the replicated tensors); after
    a barrier rank 0 uploads ``state.json``, whose presence marks a complete remote checkpoint,
    and deletes remote checkpoints beyond ``keep``. The remote copy is the truth on resume:
    every rank resumes the newest complete remote checkpoint, which the first process of each
    node downloads into its local folder if it is not there. The run folder's name (params +
    data fingerprint) is part of the prefix, so only checkpoints of the same run are resumed.
    """

    def __init__(self, url: str, keep: int) -> None:
        self.url, self.keep = url.rstrip("/"), keep

    def _steps(self) -> dict[int, str]:
        from mofi_core.io import s3

        steps = {}
        for obj, _ in s3.list_objects(self.url + "/"):
            rel = obj[len(self.url) + 1:]
            m = STEP_DIR.match(rel.split("/", 1)[0])
            if m and rel.endswith("/state.json"):
                steps[int(m.group(1))] = f"{self.url}/{rel.split('/', 1)[0]}"
        return steps

    def latest_step(self) -> int | None:
        return max(self._steps(), default=None)

    def ensure(self, run_dir: Path, step: int) -> bool:
        """Make remote checkpoint ``step`` complete in ``run_dir`` (download it unless it is
        there); safe when several nodes share ``run_dir``. True when it downloaded."""
        from mofi_core.io import s3

        final = step_dir(run_dir, step)
        if (final / "state.json").is_file():
            return False
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            s3.download_dir(f"{self.url}/{final.name}", tmp)
            if not (tmp / "state.json").is_file():
                raise FileNotFoundError(f"{self.url}/{final.name} has no state.json after "
                                        "download (deleted while reading?)")
            if final.exists() and not (final / "state.json").is_file():
                shutil.rmtree(final)  # an unfinished local copy of this step
            try:
                tmp.rename(final)
            except OSError:
                if not (final / "state.json").is_file():  # not another node's complete copy
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    def push_rank(self, tmp_dir: Path, step: int, rank: int) -> None:
        """Upload this rank's files of checkpoint ``step`` (rank 0: also the replicated ones)."""
        from mofi_core.io import s3

        names = [f"rank-{rank:05d}.safetensors", f"rank-{rank:05d}.json"]
        if rank == 0:
            names.append("replicated.safetensors")
        for name in names:
            s3.upload(tmp_dir / name, f"{self.url}/{step_dir(Path(), step).name}/{name}")

    def finish(self, final_dir: Path) -> None:
        """Rank 0, after every rank pushed: the completion marker, then the pruning."""
        from mofi_core.io import s3

        s3.upload(final_dir / "state.json", f"{self.url}/{final_dir.name}/state.json")
        steps = sorted(self._steps())
        for old in steps[:-self.keep] if self.keep > 0 else []:
            for obj, _ in s3.list_objects(f"{self.url}/{step_dir(Path(), old).name}/"):
                s3.delete(obj)
