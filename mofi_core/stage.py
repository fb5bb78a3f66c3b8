"""What every stage command does around its pure function: load its params section, open a
tracking run, call the stage, write its metrics file, log params/metrics/outputs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mofi_core import tracking
from mofi_core.config import Section, load_params
from mofi_core.io.atomic import sweep_stale_temps, write_json
from mofi_core.io.layout import Layout
from mofi_core.io.storage import StageStorage, storage_root
from mofi_core.parallel import use_executor


@dataclass
class StageContext:
    layout: Layout
    tracker: tracking.Tracker
    artifacts: list[Path] = field(default_factory=list)  # logged to the run at the end
    storage: StageStorage | None = None  # set when a storage root (s3://) is configured


StageFn = Callable[[Section, StageContext], dict[str, Any]]


def distributed_launch() -> bool:
    """True inside a torchrun launch of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def execute(name: str, fn: StageFn, params_file: Path, root: Path) -> dict[str, Any]:
    """Run stage ``name``; its metrics land in ``metrics/<name>.json`` (DVC metrics)."""
    params = load_params(params_file)
    section = params.section(name)
    layout = Layout(root.resolve())
    if tracking.is_main_process():
        stale = sweep_stale_temps(*(layout.root / d for d in
                                    ("data", "models", "reports", "metrics", "plots", ".mofi")))
        if stale:
            print(f"{name}: removed {len(stale)} temporary file(s) left by a killed run")
    root_url = storage_root(params.storage.root)
    store = StageStorage.open(root_url, layout.root, name,
                              getattr(fn, "streamed_inputs", ())) if root_url else None
    with tracking.run(name, layout.root, tags={"mofi.stage": name}) as tracker:
        tracker.log_params({name: section.model_dump(mode="json")})
        ctx = StageContext(layout=layout, tracker=tracker, storage=store)
        start = time.perf_counter()
        try:
            if store is not None and not distributed_launch():
                # under torchrun, infra/torchrun-train.sh fetches once per node before launching
                for dep, stats in store.pull().items():
                    print(f"{name}: input {dep} from {store.storage.url(dep)}: {stats}")
            with use_executor(os.environ.get("MOFI_EXECUTOR_ADDRESS")
                              or params.executor.address):
                metrics = fn(section, ctx)
            # timings go to the run, not the metrics file: outputs stay byte-identical on re-runs
            if tracking.is_main_process():  # under torchrun every rank runs the stage
                write_json(layout.metrics(name), metrics)
                if store is not None:
                    for out, stats in store.push().items():
                        print(f"{name}: output {out} to {store.storage.url(out)}: {stats}")
            tracker.log_metrics({**metrics, "stage_seconds": time.perf_counter() - start})
        finally:
            # also when the stage fails: a failed gate's report is what the reviewer needs
            for path in ctx.artifacts:
                if path.exists():
                    tracker.log_artifact(path, path.name if path.is_dir() else None)
    return metrics
