"""The stage runner: what every ``mofi <stage>`` does around the stage's pure function.

Load the row's params section, open a tracking run, fetch inputs from the storage root (when one
is set), check what the stage needs before any work (its inputs exist, its outputs can be
written, the row's own ``check``), call the entry named in the stage table
(:mod:`mofi_core.stages`), write ``metrics/<stage>.json``, publish outputs, log
params/metrics/artifacts.

A stage that fails leaves its previous outputs and metrics as they were: they are hard-linked
aside before the stage runs (every output is written atomically, by rename, so the links keep
the old bytes) and moved back on failure; what the failed run wrote goes to
``.mofi/failed/<stage>/`` for inspection. A SIGKILL leaves the partial outputs in place instead,
so that the next run resumes them (``persist`` outputs, ``.mofi/state``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mofi_core import tracking
from mofi_core.config.load import Params, load_params
from mofi_core.config.section import ParamsError, Section
from mofi_core.context import StageContext
from mofi_core.io.atomic import sweep_stale_temps, write_json
from mofi_core.io.layout import Layout
from mofi_core.io.storage import StageStorage, storage_root
from mofi_core.launch import distributed_launch
from mofi_core.parallel import use_executor
from mofi_core.stages import StageSpec, StageVerdict, producer_of

StageFn = Callable[[Section, StageContext], dict[str, Any]]


def check_inputs(spec: StageSpec, root: Path, storage_url: str = "") -> None:
    """Each declared input exists (inputs streamed from a storage root excepted).
    ``storage_url``: the storage root the inputs come from, if any."""
    for dep in spec.inputs:
        if dep in spec.streamed or (root / dep).exists():
            continue
        maker = producer_of(dep)
        if storage_url and distributed_launch():
            how = (f"under torchrun the stage does not pull its inputs from {storage_url}: run "
                   f"`mofi storage pull {spec.name}` on each node before launching "
                   "(infra/torchrun-train.sh does it)")
        elif maker:
            how = (f"run stage {maker.name!r} first (dvc repro -s {maker.name}, or "
                   f"mofi {maker.name})")
        else:
            how = "provide it"
        raise FileNotFoundError(f"{spec.name} needs {dep}, which is missing: {how}")


def check_writable(spec: StageSpec, root: Path) -> None:
    """Each output can be created: its nearest existing folder takes a new file (a real probe:
    permission bits do not stop root, a read-only disk or a file in the way do)."""
    for rel in spec.writes():
        target = root / rel
        probe = next(p for p in (target, *target.parents) if p.exists())
        if probe == target and Path(rel).suffix:  # a file output is written in its folder
            probe = target.parent
        if not probe.is_dir():
            raise NotADirectoryError(f"{spec.name} cannot write {rel}: {probe} is a file, not a "
                                     "folder; move it away")
        try:
            fd, name = tempfile.mkstemp(dir=probe, prefix=".mofi-probe-")
            os.close(fd)
            os.unlink(name)
        except OSError as err:
            raise PermissionError(f"{spec.name} cannot write {rel}: {probe} is not writable "
                                  f"({err.strerror})") from None


def _link_tree(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, copy_function=_link_or_copy, symlinks=True)
    else:
        _link_or_copy(src, dest)


def _link_or_copy(src: str | Path, dest: str | Path) -> None:
    try:
        os.link(src, dest)
    except OSError:  # another filesystem, or links not supported: a copy keeps the bytes too
        shutil.copy2(src, dest)


@contextlib.contextmanager
def outputs_kept_on_failure(spec: StageSpec, root: Path) -> Iterator[None]:
    """On failure (an exception, Ctrl-C), put the stage's previous outputs back as they were and
    keep what the failed run wrote under ``.mofi/failed/<stage>/``."""
    backup = root / ".mofi" / "backup" / spec.address
    failed = root / ".mofi" / "failed" / spec.address
    shutil.rmtree(backup, ignore_errors=True)  # a killed run's: the outputs are resumed as is
    kept = [rel for rel in spec.writes() if (root / rel).exists()]
    for rel in kept:
        _link_tree(root / rel, backup / rel)
    try:
        yield
    except StageVerdict:
        raise  # a complete result that fails a check: it is kept, it is the evidence
    except BaseException:
        shutil.rmtree(failed, ignore_errors=True)
        for rel in spec.writes():
            if (root / rel).exists():
                (failed / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(root / rel, failed / rel)
        for rel in kept:
            os.replace(backup / rel, root / rel)
        if failed.exists():
            print(f"{spec.address}: failed; its previous outputs are back in place, what this run "
                  f"wrote is in {failed}")
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


def section_of(spec: StageSpec, params: Params) -> Section:
    """The params section stage ``spec`` runs with; a foreach instance's with its item set."""
    section = params.section(spec.section)
    if not spec.foreach:
        return section
    items = [str(v) for v in getattr(section, spec.foreach)]
    key = f"{spec.section}.{spec.foreach}"
    if not spec.item:
        raise ParamsError(f"stage {spec.name!r} runs once per entry of {key} {items}: name "
                          f"one (mofi {spec.name} {items[0]}; DVC: {spec.name}@{items[0]})")
    if spec.item not in items:
        raise ParamsError(f"{spec.address}: {spec.item!r} is not in {key} {items}; add it "
                          "there to train, evaluate and register it")
    return section.model_copy(update={spec.item_key: spec.item})


def write_stage_metrics(spec: StageSpec, root: Path, metrics: dict[str, Any]) -> None:
    """``{"<stage>": metrics}`` (a foreach instance: ``{"<stage>": {"<item>": metrics}}``), so
    DVC shows each key prefixed (``train.multitask.final_loss``)."""
    write_json(root / spec.metrics, {spec.name: {spec.item: metrics} if spec.item else metrics})


def execute(spec: StageSpec, params_file: Path, root: Path, fn: StageFn | None = None,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run stage ``spec`` (its entry, or ``fn`` in tests) with ``params_file`` plus dotted
    ``overrides`` (validated like the file); its metrics land in ``spec.metrics``."""
    name = spec.address
    params = load_params(params_file, overrides)
    section = section_of(spec, params)
    fn = fn or spec.load()
    layout = Layout(root.resolve())
    if tracking.is_main_process():
        stale = sweep_stale_temps(*(layout.root / d for d in
                                    ("data", "models", "reports", "metrics", "plots", ".mofi")))
        if stale:
            print(f"{name}: removed {len(stale)} temporary file(s) left by a killed run")
    root_url = storage_root(params.storage.root)
    store = (StageStorage.open(root_url, layout.root, name, params.value, spec.streamed)
             if root_url else None)
    tags = {"mofi.stage": spec.name, **({f"mofi.{spec.item_key}": spec.item} if spec.item
                                         else {})}
    with tracking.run(name, layout.root, tags=tags) as tracker:
        tracker.log_params({spec.name: section.model_dump(mode="json")})
        ctx: StageContext = StageContext(spec=spec, layout=layout, tracker=tracker,
                                         storage=store, params=params)
        start = time.perf_counter()
        main = tracking.is_main_process()  # under torchrun every rank runs the stage
        try:
            if store is not None and not distributed_launch():
                # under torchrun, infra/torchrun-train.sh fetches once per node before launching
                for dep, stats in store.pull().items():
                    print(f"{name}: input {dep} from {store.storage.url(dep)}: {stats}")
            check_inputs(spec, layout.root, root_url)
            if main:
                check_writable(spec, layout.root)
            check = spec.load_check()
            if check is not None:
                check(section, ctx)
            guard = outputs_kept_on_failure(spec, layout.root) if main \
                else contextlib.nullcontext()
            with guard, use_executor(os.environ.get("MOFI_EXECUTOR_ADDRESS")
                                     or params.executor.address):
                try:
                    metrics = fn(section, ctx)
                except StageVerdict as verdict:
                    if main and verdict.metrics:  # the metrics of the result it judged
                        write_stage_metrics(spec, layout.root, verdict.metrics)
                    raise
                # timings go to the run, not the metrics file: byte-identical re-runs
                if main:
                    write_stage_metrics(spec, layout.root, metrics)
            if main and store is not None:
                for out, stats in store.push().items():
                    print(f"{name}: output {out} to {store.storage.url(out)}: {stats}")
            tracker.log_metrics({**metrics, "stage_seconds": time.perf_counter() - start})
        finally:
            # also when the stage fails: a failed gate's report is what the reviewer needs
            for path in ctx.artifacts:
                if path.exists():
                    tracker.log_artifact(path, path.name if path.is_dir() else None)
    return metrics
