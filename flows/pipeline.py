"""Read the stage DAG from ``dvc.yaml`` and apply run overrides to ``params.yaml``.

Kept free of Prefect so it is testable on its own; the flow module wires it into tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mofi_core.config import apply_overrides, parse_params, read_params_file
from mofi_core.io.storage import dvc_paths as _paths
from mofi_core.io.storage import under as _under


def stage_order(dvc_yaml: Path) -> list[str]:
    """Stages in dependency order (file order among independent stages)."""
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    if not stages:
        raise ValueError(f"{dvc_yaml} declares no stages")
    outs = {name: _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots"))
            for name, s in stages.items()}
    needs = {name: {other for other in stages if other != name
                    for dep in s.get("deps", []) for out in outs[other] if _under(dep, out)}
             for name, s in stages.items()}
    order: list[str] = []
    while len(order) < len(stages):
        ready = [n for n in stages if n not in order and needs[n] <= set(order)]
        if not ready:
            raise ValueError(f"{dvc_yaml}: cycle among stages {sorted(set(stages) - set(order))}")
        order.append(ready[0])
    return order


def write_overrides(params_file: Path, overrides: dict[str, Any]) -> None:
    """Validate overrides against the params schema, then write them into ``params.yaml``
    (comments kept), as ``dvc exp run -S`` does: DVC records them in dvc.lock, so a later
    ``dvc repro`` reproduces the run and ``git diff params.yaml`` shows what was changed."""
    if not overrides:
        return
    parse_params(apply_overrides(read_params_file(params_file), overrides), str(params_file))
    from ruamel.yaml import YAML

    rt = YAML()  # round-trip mode: builds plain mappings/scalars only, keeps comments
    doc = rt.load(params_file.read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    from mofi_core.io.atomic import atomic_path

    with atomic_path(params_file) as tmp, tmp.open("w", encoding="utf-8") as fh:
        rt.dump(doc, fh)
