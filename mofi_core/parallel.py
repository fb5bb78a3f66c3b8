"""Shard-level work: run a pure function per shard, in a process pool, resumably.

A data stage (ingest, ner, score, build) is split into one *job* per input shard.
``iter_shards`` runs the jobs that are not already done, each writing its own outputs
atomically, and yields every job's summary in job order as results arrive (so results never
depend on scheduling, and a caller folding them never holds them all); ``run_shards`` collects
them. A job is *done* when its record under the state folder says it ran on the same
input (content identity) with the same stage fingerprint (params + code-relevant inputs) and
its outputs still hash to what it wrote.
A crash leaves at most the outputs of unfinished jobs without a record: those are redone.

The state folder lives outside the DVC-tracked outputs (``.mofi/state/<stage>``) so that the
outputs stay byte-identical across runs and machines.

Where the jobs run: a local spawn process pool by default; a Dask cluster when an executor
address is set (params ``executor.address``, or ``MOFI_EXECUTOR_ADDRESS``, e.g.
``tcp://scheduler:8786``). Each job is a pure function of its shard, and summaries are
collected in job order, so the outputs are byte-identical either way. On a real cluster the
workers must see the same paths (shared filesystem) as this process, and reach the S3 store with
their own environment (endpoint and keys): a worker that cannot fails its job, and the stage,
naming the shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from mofi_core.io.atomic import write_json
from mofi_core.io.hashing import file_sha256, fingerprint


@dataclass(frozen=True)
class ShardJob:
    """One unit of shard work: ``name`` names its outputs, ``source`` is what it reads."""

    name: str
    source: str
    identity: str | None  # content identity of the source; None = cannot tell, always redo


class ResumeState:
    """Done-records of one stage: ``<state_dir>/<job name>.json``."""

    def __init__(self, state_dir: Path, stage_fingerprint: str) -> None:
        self.dir = Path(state_dir)
        self.fingerprint = stage_fingerprint

    def _record(self, job: ShardJob) -> Path:
        return self.dir / f"{job.name}.json"

    def is_done(self, job: ShardJob, outputs: Sequence[Path]) -> bool:
        if job.identity is None:
            return False
        rec_path = self._record(job)
        if not rec_path.is_file():
            return False
        try:
            rec = json.loads(rec_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False  # a damaged record only costs a redo
        if rec.get("fingerprint") != self.fingerprint or rec.get("identity") != job.identity:
            return False
        want = rec.get("outputs", {})
        if sorted(want) != sorted(p.name for p in outputs):
            return False
        return all(p.is_file() and file_sha256(p) == want[p.name] for p in outputs)

    def summary(self, job: ShardJob) -> dict[str, Any]:
        return json.loads(self._record(job).read_text(encoding="utf-8"))["summary"]

    def mark_done(self, job: ShardJob, outputs: Sequence[Path], summary: dict[str, Any]) -> None:
        if job.identity is None:
            return
        write_json(self._record(job), {
            "fingerprint": self.fingerprint, "identity": job.identity, "source": job.source,
            "outputs": {p.name: file_sha256(p) for p in outputs}, "summary": summary})

    def forget_others(self, names: Iterable[str]) -> None:
        keep = {f"{n}.json" for n in names}
        if self.dir.is_dir():
            for rec in self.dir.glob("*.json"):
                if rec.name not in keep:
                    rec.unlink()


def remove_stale(folder: Path, names: Iterable[str]) -> None:
    """Create ``folder`` if needed and delete what is not an output of a current job (outputs
    are named ``<job name>.<suffix>``): shards gone from the input, temp files of killed runs."""
    folder.mkdir(parents=True, exist_ok=True)
    keep = set(names)
    for f in folder.iterdir():
        if f.name.split(".", 1)[0] not in keep or ".tmp-" in f.name:
            f.unlink()


def resolve_workers(requested: int, jobs: int) -> int:
    """0 means all cores; never more processes than jobs."""
    n = requested or os.cpu_count() or 1
    return max(1, min(n, jobs))


JobFn = Callable[[ShardJob], tuple[list[Path], dict[str, Any]]]

_EXECUTOR: ContextVar[str] = ContextVar("mofi_executor", default="")


@contextlib.contextmanager
def use_executor(address: str) -> Iterator[None]:
    """Run shard jobs started inside this block on the Dask scheduler at ``address``
    ("" = the local process pool)."""
    token = _EXECUTOR.set(address)
    try:
        yield
    finally:
        _EXECUTOR.reset(token)


def executor_address() -> str:
    return _EXECUTOR.get() or os.environ.get("MOFI_EXECUTOR_ADDRESS", "")


_INIT_LOCK = threading.Lock()
_INITIALISED: set[str] = set()


class ShardJobError(RuntimeError):
    """A shard job failed for a reason other than its data (data problems are rejections)."""


def shard_error(job: ShardJob, err: Exception) -> Exception:
    """``err`` as one line naming the shard, of the same type where that type takes a message
    (callers catching ``ValueError`` still can); the worker's traceback is not carried."""
    try:
        return type(err)(f"shard {job.name} ({job.source}): {err}")
    except Exception:  # an exception type that does not take one message
        return ShardJobError(f"shard {job.name} ({job.source}): {type(err).__name__}: {err}")


_INIT_FAILURE: list[str] = []  # in a pool worker: why its initializer failed


def _guarded_init(initializer: Callable[..., None], *initargs: Any) -> None:
    """A pool worker's initializer that never breaks the pool: a failure is kept and reported
    by the worker's first job as one line (not a traceback per worker and BrokenProcessPool)."""
    try:
        initializer(*initargs)
    except Exception as err:
        _INIT_FAILURE.append(f"{type(err).__name__}: {err}")


def _guarded_call(job: ShardJob, fn: JobFn) -> tuple[list[Path], dict[str, Any]]:
    if _INIT_FAILURE:
        raise ShardJobError(f"worker set-up failed before shard {job.name}: {_INIT_FAILURE[0]}")
    try:
        return fn(job)
    except Exception as err:
        raise shard_error(job, err) from None


def _call_in_worker(job: ShardJob, fn: JobFn, initializer: Callable[..., None] | None,
                    initargs: tuple) -> tuple[list[Path], dict[str, Any]]:
    """Dask has no per-worker initializer for a map: run it once per worker process."""
    if initializer is not None:
        key = f"{initializer.__module__}.{initializer.__qualname__}:{fingerprint(initargs)}"
        with _INIT_LOCK:
            if key not in _INITIALISED:
                _guarded_init(initializer, *initargs)
                _INITIALISED.add(key)
    return _guarded_call(job, fn)


def _run_dask(address: str, fn: JobFn, todo: Sequence[ShardJob],
              initializer: Callable[..., None] | None, initargs: tuple
              ) -> Iterator[tuple[list[Path], dict[str, Any]]]:
    try:
        from distributed import Client
    except ImportError as err:
        raise RuntimeError(f"executor.address is {address!r} but dask.distributed is not "
                           "installed (pip install 'distributed')") from err
    try:
        client = Client(address, set_as_default=False,
                        timeout=os.environ.get("MOFI_DASK_CONNECT_TIMEOUT", "30s"))
    except OSError as err:
        raise RuntimeError(f"cannot reach the Dask scheduler at executor.address {address!r}: "
                           f"{err}; start it (dask scheduler) or unset the address") from err
    with client:
        futures = client.map(_call_in_worker, list(todo), fn=fn, initializer=initializer,
                             initargs=initargs, pure=False)
        for fut in futures:  # in job order, whatever order they finish in
            yield fut.result()


def iter_shards(fn: JobFn, jobs: Sequence[ShardJob],
                outputs_of: Callable[[ShardJob], list[Path]], state: ResumeState | None,
                workers: int = 1, initializer: Callable[..., None] | None = None,
                initargs: tuple = ()) -> Iterator[tuple[ShardJob, dict[str, Any], bool]]:
    """Run ``fn`` on every job not already done; yield ``(job, summary, skipped)`` in job
    order as results arrive, so a caller folding the summaries never holds them all (build's
    per-entity counts per shard).

    ``fn(job) -> (output paths, summary)`` must be a module-level function (it is pickled to
    spawn workers) that writes its outputs atomically. ``initializer(*initargs)`` runs once per
    worker process (or once in this process when ``workers == 1``) to load heavy state. A job
    already done yields the summary ``state`` kept for it.
    """
    todo = [j for j in jobs if state is None or not state.is_done(j, outputs_of(j))]
    results = _run(fn, todo, workers, initializer, initargs) if todo else iter(())
    pending = {j.name for j in todo}
    for job in jobs:
        if job.name in pending:
            outs, summary = next(results)  # results come in todo order, a subsequence of jobs
            if state is not None:
                state.mark_done(job, outs, summary)
            yield job, summary, False
        else:
            assert state is not None
            yield job, state.summary(job), True
    if state is not None:
        state.forget_others(j.name for j in jobs)


def _run(fn: JobFn, todo: Sequence[ShardJob], workers: int,
         initializer: Callable[..., None] | None, initargs: tuple
         ) -> Iterator[tuple[list[Path], dict[str, Any]]]:
    """``fn``'s results for ``todo``, in order: on Dask, in this process or in a spawn pool."""
    address = executor_address()
    if address:
        yield from _run_dask(address, fn, todo, initializer, initargs)
        return
    n = resolve_workers(workers, len(todo))
    if n == 1:
        if initializer is not None:
            initializer(*initargs)
        yield from (_guarded_call(job, fn) for job in todo)
        return
    # spawn: workers start clean whatever this process has loaded (threads, torch, ...)
    init = (_guarded_init, (initializer, *initargs)) if initializer is not None else (None, ())
    pool = ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn"),
                               initializer=init[0], initargs=init[1])
    try:
        yield from pool.map(partial(_guarded_call, fn=fn), todo)
    finally:  # on the first failure, jobs not yet started are dropped, not run for nothing
        pool.shutdown(wait=True, cancel_futures=True)


def run_shards(fn: JobFn, jobs: Sequence[ShardJob], outputs_of: Callable[[ShardJob], list[Path]],
               state: ResumeState | None, workers: int = 1,
               initializer: Callable[..., None] | None = None, initargs: tuple = ()
               ) -> tuple[list[dict[str, Any]], int]:
    """:func:`iter_shards` collected: (summaries in job order, jobs skipped)."""
    done = list(iter_shards(fn, jobs, outputs_of, state, workers, initializer, initargs))
    return [summary for _, summary, _ in done], sum(skipped for _, _, skipped in done)


