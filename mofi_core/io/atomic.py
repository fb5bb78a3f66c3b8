"""Atomic publication of files and folders: write under a temporary name, then rename.

A crash (or ``kill -9``) mid-stage therefore leaves either the previous output or nothing under
the final name, never a half-written one. Temporary names carry ``.tmp-`` so they are easy to spot
and are git-ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary file path; on success it is fsynced and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if path.exists():
            old = _tmp_sibling(path)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: Path | str, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n",
                       encoding="utf-8")


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _pid_of(tmp_name: str) -> int | None:
    try:
        return int(tmp_name.split(".tmp-", 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, started: float | None = None) -> bool:
    """Is ``pid`` a live process (a zombie is not; with ``started``, a reused pid is not)?"""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 1e-3
    except psutil.Error:
        return False


def sweep_stale_temps(*folders: Path) -> list[Path]:
    """Remove temporary files/folders (``.<name>.tmp-<pid>-<id>``) left under ``folders`` by
    processes that no longer exist (a ``kill -9`` skips the cleanup in ``atomic_path``).
    Temporaries of live processes are left alone. Returns what was removed."""
    removed = []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for tmp in Path(folder).rglob(".*.tmp-*"):
            pid = _pid_of(tmp.name)
            if pid is None or process_alive(pid) or not tmp.exists():
                continue
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed.append(tmp)
    return removed
