"""The studies' one stage runner: pipeline stages in a scratch project, resumable.

A study (``make paper``, ``make calibrate``) runs the pipeline's own stage commands
(:func:`mofi_core.runner.execute`, as ``mofi <stage>`` does) in a scratch project per world,
outside the project's DVC graph: a stage whose metrics file is there is done, so an interrupted
study resumes where it stopped, and a scratch project made with other params is refused, never
mixed. Each stage's wall time is kept beside it (``stage-seconds.json``).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mofi_core.config.load import load_params
from mofi_core.io.atomic import write_json

TIMES = "stage-seconds.json"


class WorldMismatch(RuntimeError):
    """A scratch project holds results made with other params."""


def run_stages(params_file: Path, overrides: dict[str, Any], work: Path,
               stages: tuple[str, ...], label: str) -> None:
    """Run ``stages`` (DVC addresses, e.g. ``train@multitask``) with ``params_file`` +
    ``overrides`` in the scratch project ``work``. A stage whose metrics file is there is
    skipped; a folder made with other params for these stages is refused, never mixed."""
    from mofi_core.runner import execute
    from mofi_core.stages import get

    params = load_params(params_file, overrides)
    work.mkdir(parents=True, exist_ok=True)
    stamp = work / f"{label}-params.json"
    # every result-deciding param of the stages run: another value is another world
    wanted = {name: params.section(get(name).section).result_key() for name in stages}
    if stamp.is_file():
        held = json.loads(stamp.read_text(encoding="utf-8"))
        if any(held.get(k, v) != v for k, v in wanted.items()):
            raise WorldMismatch(f"{work} holds results made with other params ({stamp}); "
                                "delete that folder or pass another --work")
        wanted = {**held, **wanted}
    write_json(stamp, wanted)
    for name in stages:
        spec = get(name)
        if (work / spec.metrics).is_file():
            print(f"{label}: {name} already done in {work}")
            continue
        print(f"{label}: {name} ({work.name})")
        with timed(work, name):
            execute(spec, Path(params_file), work, overrides=overrides)




@contextmanager
def timed(work: Path, name: str):
    """Add the wall time of the ``with`` body to ``work/stage-seconds.json`` under ``name``
    when it succeeds: a study resumed over several invocations still sums the time its work
    took, and a pause between invocations counts nowhere."""
    start = time.perf_counter()
    yield
    write_json(work / TIMES, {**stage_seconds(work), name: time.perf_counter() - start})


def stage_seconds(work: Path) -> dict[str, float]:
    """What :func:`timed` recorded in ``work`` (empty when nothing ran there yet)."""
    record = work / TIMES
    return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
