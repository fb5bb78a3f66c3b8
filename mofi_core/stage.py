"""The stage runner: what every ``mofi <stage>`` does around the stage's pure function.

Load the row's params section, open a tracking run, fetch inputs from the storage root (when one
is set), call the entry named in the stage table (:mod:`mofi_core.stages`), write
``metrics/<stage>.json``, publish outputs, log params/metrics/artifacts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from mofi_core import tracking
from mofi_core.config import Section, load_params
from mofi_core.io.atomic import sweep_stale_temps, write_json
from mofi_core.io.layout import Layout
from mofi_core.io.storage import StageStorage, storage_root
from mofi_core.parallel import use_executor
from mofi_core.stages import StageSpec

S = TypeVar("S", bound=Section)


@dataclass
class StageContext(Generic[S]):
    """What a stage function gets beside its params section: where things are, where to log."""

    spec: StageSpec
    layout: Layout
    tracker: tracking.Tracker
    artifacts: list[Path] = field(default_factory=list)  # logged to the run at the end
    storage: StageStorage | None = None  # set when a storage root (s3://) is configured


StageFn = Callable[[Section, StageContext], dict[str, Any]]


def distributed_launch() -> bool:
    """True inside a torchrun launch of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def execute(spec: StageSpec, params_file: Path, root: Path, fn: StageFn | None = None,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run stage ``spec`` (its entry, or ``fn`` in tests) with ``params_file`` plus dotted
    ``overrides`` (validated like the file); its metrics land in ``metrics/<name>.json``."""
    name = spec.name
    params = load_params(params_file, overrides)
    section = params.section(spec.section)
    fn = fn or spec.load()
    layout = Layout(root.resolve())
    if tracking.is_main_process():
        stale = sweep_stale_temps(*(layout.root / d for d in
                                    ("data", "models", "reports", "metrics", "plots", ".mofi")))
        if stale:
            print(f"{name}: removed {len(stale)} temporary file(s) left by a killed run")
    root_url = storage_root(params.storage.root)
    store = StageStorage.open(root_url, layout.root, name, spec.streamed) if root_url else None
    with tracking.run(name, layout.root, tags={"mofi.stage": name}) as tracker:
        tracker.log_params({name: section.model_dump(mode="json")})
        ctx: StageContext = StageContext(spec=spec, layout=layout, tracker=tracker,
                                         storage=store)
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
