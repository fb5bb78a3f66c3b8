"""How many processes a stage command runs on this node, and the torchrun launch of them.

A section with ``nproc_per_node`` (``train``, ``baseline``) may ask for several processes per
node: the stage command then fetches its inputs once for the node and starts itself again as
``n`` processes of ``torch.distributed.run --standalone``; rank 0 tracks, writes the model and
metrics and publishes, so ``dvc.lock`` records what the processes wrote. Inside a launch (or
for a section without the knob) the command runs in its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mofi_core.config.load import load_params
from mofi_core.stages import StageSpec


def distributed_launch() -> bool:
    """True inside a torchrun launch of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def node_processes(spec: StageSpec, params: Path, overrides: dict[str, Any]) -> int:
    """How many processes this stage command should run on this node: its section's
    ``nproc_per_node`` (``auto`` = the visible GPUs), 1 for stages without one or when already
    inside a torchrun launch."""
    if distributed_launch() or os.environ.get("TORCHELASTIC_RUN_ID"):
        return 1
    section = load_params(params, overrides).section(spec.section)
    wanted = getattr(section, "nproc_per_node", 1)
    if wanted == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    return int(wanted)


def launch_command(spec: StageSpec, n: int, params: Path, root: Path,
                   sets: list[str]) -> list[str]:
    """This stage command again, as ``n`` processes of torch.distributed.run on this node
    (``sets``: the ``-S key=value`` overrides as the user wrote them)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(n), "-m", "mofi_core.cli", spec.name]
    if spec.item:
        cmd.append(spec.item)
    cmd += ["--params", str(params), "--root", str(root)]
    for s in sets:
        cmd += ["-S", s]
    return cmd


def run_on_node(spec: StageSpec, n: int, params: Path, root: Path, sets: list[str]) -> int:
    """Run the stage as ``n`` torchrun processes of this node; their exit status."""
    print(f"{spec.address}: {n} processes on this node (torch.distributed.run --standalone)",
          flush=True)
    return subprocess.call(launch_command(spec, n, params, root, sets))
