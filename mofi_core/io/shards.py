"""Webdataset shards in img2dataset layout: ``key.jpg`` + ``key.txt`` + ``key.json`` per sample.

Writing is deterministic (fixed mtime/owner) so identical inputs give byte-identical shards and
DVC hashes, and atomic (temp name + rename). Reading groups tar members by key the way
webdataset does, but reports problems instead of raising mid-shard: the caller decides whether a
bad member is a rejection or an error.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mofi_core.io.atomic import atomic_path


def shard_name(index: int) -> str:
    return f"{index:05d}.tar"


class ShardWriter:
    """Write samples to one tar; publish it atomically on ``close``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)
        self.count = 0

    def write(self, key: str, members: dict[str, bytes | str | dict[str, Any]]) -> None:
        if "/" in key or key.startswith("."):
            raise ValueError(f"sample key {key!r} must not contain '/' or start with '.'")
        for ext, value in members.items():
            data = _encode(value)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        self._tar.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        self._tar.close()
        self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _encode(value: bytes | str | dict[str, Any]) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")


@dataclass
class ShardProblem:
    key: str
    reason: str


@dataclass
class ShardReadResult:
    samples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[ShardProblem] = field(default_factory=list)


def split_member_name(name: str) -> tuple[str, str] | None:
    """Split a member name into (key, extension) as webdataset does: at the first dot of the
    basename, so ``dir/abc.seg.jpg`` -> (``dir/abc``, ``seg.jpg``). ``None`` for dotless names."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base or base.startswith("."):
        return None
    prefix = name[: len(name) - len(base)]
    stem, ext = base.split(".", 1)
    return prefix + stem, ext.lower()


def iter_samples(path: Path | str) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__": key, ext: bytes, ...}`` grouped by key, in tar order.

    Raises :class:`tarfile.TarError` / ``OSError`` for an unreadable or truncated shard, after
    yielding the samples complete before the damage; callers that must survive bad shards catch
    those and record the shard as rejected.
    """
    current: dict[str, Any] | None = None
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            parts = split_member_name(member.name) if member.isfile() else None
            if parts is None:
                continue
            key, ext = parts
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            fh = tar.extractfile(member)
            data = fh.read() if fh is not None else b""
            if current is None:
                current = {"__key__": key}
            current[ext] = data
        if current is not None:
            yield current
        _check_trailer(tar, Path(path))


def _check_trailer(tar: tarfile.TarFile, path: Path) -> None:
    """tarfile stops silently at a header cut short; a complete plain tar ends in zero blocks."""
    if not isinstance(tar.fileobj, io.BufferedReader):  # compressed: the codec checks its end
        return
    tar.fileobj.seek(tar.offset)
    tail = tar.fileobj.read()
    if len(tail) < tarfile.BLOCKSIZE or tail.strip(b"\0"):
        raise tarfile.ReadError(f"{path.name} is truncated: no end-of-archive after byte "
                                f"{tar.offset}")


def list_shards(folder: Path | str) -> list[Path]:
    shards = sorted(Path(folder).glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no .tar shards in {folder}; run the upstream stage first")
    return shards
