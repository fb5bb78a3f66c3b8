"""Shard-level work: run a pure function per shard, in a process pool, resumably.

A data stage (ingest, ner, score) is split into one *job* per input shard. ``run_shards`` runs
the jobs that are not already done, each writing its own outputs atomically, and returns every
job's summary in job order (so results never depend on scheduling). A job is *done* when its
record under the state folder says it ran on the same input (content identity) with the same
stage fingerprint (params + code-relevant inputs) and its outputs still hash to what it wrote.
A crash leaves at most the outputs of unfinished jobs without a record: those are redone.

The state folder lives outside the DVC-tracked outputs (``.mofi/state/<stage>``) so that the
outputs stay byte-identical across runs and machines.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from mofi_core.io.atomic import write_json


@dataclass(frozen=True)
class ShardJob:
    """One unit of shard work: ``name`` names its outputs, ``source`` is what it reads."""

    name: str
    source: str
    identity: str | None  # content identity of the source; None = cannot tell, always redo


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (params dumps, model hashes, ...)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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


def run_shards(fn: JobFn, jobs: Sequence[ShardJob], outputs_of: Callable[[ShardJob], list[Path]],
               state: ResumeState | None, workers: int = 1,
               initializer: Callable[..., None] | None = None, initargs: tuple = ()
               ) -> tuple[list[dict[str, Any]], int]:
    """Run ``fn`` on every job not already done; return (summaries in job order, jobs skipped).

    ``fn(job) -> (output paths, summary)`` must be a module-level function (it is pickled to
    spawn workers) that writes its outputs atomically. ``initializer(*initargs)`` runs once per
    worker process (or once in this process when ``workers == 1``) to load heavy state.
    """
    todo = [j for j in jobs if state is None or not state.is_done(j, outputs_of(j))]
    results: dict[str, dict[str, Any]] = {}
    if todo:
        n = resolve_workers(workers, len(todo))
        if n == 1:
            if initializer is not None:
                initializer(*initargs)
            done = map(fn, todo)
            for job, (outs, summary) in zip(todo, done, strict=True):
                _finish(state, job, outs, summary, results)
        else:
            # spawn: workers start clean whatever this process has loaded (threads, torch, ...)
            with ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn"),
                                     initializer=initializer, initargs=initargs) as pool:
                for job, (outs, summary) in zip(todo, pool.map(fn, todo), strict=True):
                    _finish(state, job, outs, summary, results)
    skipped = 0
    for job in jobs:
        if job.name not in results:
            assert state is not None
            results[job.name] = state.summary(job)
            skipped += 1
    if state is not None:
        state.forget_others(j.name for j in jobs)
    return [results[j.name] for j in jobs], skipped


def _finish(state: ResumeState | None, job: ShardJob, outs: list[Path], summary: dict[str, Any],
            results: dict[str, dict[str, Any]]) -> None:
    if state is not None:
        state.mark_done(job, outs, summary)
    results[job.name] = summary
