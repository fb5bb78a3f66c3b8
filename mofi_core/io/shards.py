"""Webdataset shards in img2dataset layout: ``key.jpg`` + ``key.txt`` + ``key.json`` per sample.

Writing is deterministic (fixed mtime/owner) so identical inputs give byte-identical shards and
DVC hashes, and atomic (temp name + rename). Reading groups tar members by key the way
webdataset does, but reports problems instead of raising mid-shard: the caller decides whether a
bad member is a rejection or an error.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mofi_core.io.atomic import atomic_path


def shard_name(index: int) -> str:
    return f"{index:05d}.tar"


BLOCK, RECORD = 512, 512 * 20  # tar's block and record sizes


def _ustar_header(name: str, size: int) -> bytes:
    """The header ``tarfile`` writes (PAX format) for a regular file with mode 0644, owner 0,
    mtime 0: a plain ustar block when the name is short ASCII, else ``tarfile``'s own pax
    header. Building the common case here is ~5x cheaper than ``TarInfo.tobuf``."""
    raw = name.encode("ascii", "replace")
    if not name.isascii() or len(raw) > 100 or size >= 8 ** 11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    buf = bytearray(BLOCK)
    buf[0:len(raw)] = raw
    buf[100:148] = b"0000644\x000000000\x000000000\x00%011o\x0000000000000\x00" % size
    buf[148:156] = b" " * 8  # the checksum is summed with its own field as spaces
    buf[156] = ord("0")  # regular file
    buf[257:265] = b"ustar\x0000"
    buf[148:155] = b"%06o\x00" % sum(buf)
    return bytes(buf)


class ShardWriter:
    """Write samples to one tar; publish it atomically on ``close``. The bytes are exactly
    what ``tarfile`` (PAX format) writes for the same members (tested), built directly."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._fh = open(self._tmp, "wb")  # closed in close() / abort()
        self._offset = 0
        self.count = 0

    def write(self, key: str, members: dict[str, bytes | str | dict[str, Any]]) -> None:
        if "/" in key or key.startswith("."):
            raise ValueError(f"sample key {key!r} must not contain '/' or start with '.'")
        parts = []
        for ext, value in members.items():
            data = _encode(value)
            parts += [_ustar_header(f"{key}.{ext}", len(data)), data,
                      bytes(-len(data) % BLOCK)]
        blob = b"".join(parts)
        self._fh.write(blob)
        self._offset += len(blob)
        self.count += 1

    def close(self) -> None:
        end = self._offset + 2 * BLOCK  # two zero blocks end the archive ...
        self._fh.write(bytes(2 * BLOCK + (-end % RECORD)))  # ... padded to a whole record
        self._fh.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        self._fh.close()
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


@dataclass(frozen=True)
class ShardProblem:
    """A tar member that belongs to no usable sample (a directory, a name without extension)."""
    key: str
    reason: str


def split_member_name(name: str) -> tuple[str, str] | None:
    """Split a member name into (key, extension) as webdataset does: at the first dot of the
    basename, so ``dir/abc.seg.jpg`` -> (``dir/abc``, ``seg.jpg``). ``None`` for dotless names."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base or base.startswith("."):
        return None
    prefix = name[: len(name) - len(base)]
    stem, ext = base.split(".", 1)
    return prefix + stem, ext.lower()


def _member_kind(member: tarfile.TarInfo) -> str:
    for test, kind in ((member.issym, "a symlink"), (member.islnk, "a hard link"),
                       (member.isdir, "a directory"), (member.isfifo, "a FIFO"),
                       (member.ischr, "a character device"), (member.isblk, "a block device")):
        if test():
            return kind
    return f"tar type {member.type!r}"


def iter_samples(path: Path | str, on_problem: Callable[[ShardProblem], None] | None = None,
                 max_member_bytes: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__": key, ext: bytes, ...}`` grouped by key, in tar order.

    Members are only ever read into memory, never extracted, so member names (``../x``,
    ``/etc/x``) cannot write anywhere. A member that is not a regular file, or is larger than
    ``max_member_bytes`` (left unread), is not returned as data: its sample gets a
    ``"__errors__"`` list naming it, for the caller to reject. Members with no ``key.ext`` name
    go to ``on_problem`` (ignored when it is None, as webdataset does).

    Raises :class:`tarfile.TarError` / ``OSError`` for an unreadable or truncated shard, after
    yielding the samples complete before the damage; callers that must survive bad shards catch
    those and record the shard as rejected.
    """
    current: dict[str, Any] | None = None
    for member, read in _members(Path(path)):
        if member is None:  # the end: the last sample, then the end-of-archive check
            if current is not None:
                yield current
                current = None
            read()
            continue
        parts = split_member_name(member.name)
        if parts is None:
            if on_problem is not None:
                kind = "a file" if member.isfile() else _member_kind(member)
                on_problem(ShardProblem(member.name, f"tar member ({kind}) has no "
                                        "'key.extension' name; not part of any sample"))
            continue
        key, ext = parts
        if current is not None and current["__key__"] != key:
            yield current
            current = None
        if current is None:
            current = {"__key__": key}
        if not member.isfile():
            current.setdefault("__errors__", []).append(
                f"member {member.name!r} is {_member_kind(member)}, not a regular file")
            continue
        if max_member_bytes is not None and member.size > max_member_bytes:
            current.setdefault("__errors__", []).append(
                f"member {member.name!r} is {member.size} bytes (> {max_member_bytes})")
            continue
        current[ext] = read()


# gzip, bzip2, xz, zstd: compressed shards are read by tarfile from the start
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")
_USTAR = b"ustar\x0000"
# mode, uid, gid, size, mtime, checksum: (start, end) in the header block
_NUMERIC_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (148, 156))


def _members(path: Path) -> Iterator[tuple[tarfile.TarInfo | None, Callable[[], Any]]]:
    """(member, a function reading its data) in tar order, then ``(None, end check)``: a
    function raising :class:`tarfile.ReadError` unless the archive ended properly.

    Plain POSIX ustar headers of regular files, which is what :class:`ShardWriter`, Python's
    ``tarfile`` and webdataset write for short names, are parsed here, ~3x cheaper than
    ``tarfile`` (a benchmark-visible cost of ingest, score and build). From the first header
    of any other kind on (pax or GNU extensions, links, directories, base-256 numbers, a bad
    checksum or field) ``tarfile`` reads the rest of the file, so its checks and errors apply
    to everything unusual; compressed shards go to ``tarfile`` whole."""
    with open(path, "rb") as fh:
        if fh.read(6).startswith(_COMPRESSED):
            fh.seek(0)
            with tarfile.open(fileobj=fh, mode="r:*") as tar:
                yield from ((m, partial(_tar_read, tar, m)) for m in tar)
            yield None, lambda: None  # the codec checks the compressed stream's end
            return
        offset, length = 0, os.fstat(fh.fileno()).st_size
        fh.seek(0)
        while True:
            if offset > length:  # the last member's data or padding is cut (tarfile's check)
                raise tarfile.ReadError(f"{path.name}: unexpected end of data before byte "
                                        f"{offset}")
            header = fh.read(BLOCK)
            info = _plain_member(header)
            if info is None:
                break
            data_at = offset + BLOCK
            yield info, partial(_read_exact, fh, data_at, info.size, info.name)
            offset = data_at + info.size + (-info.size % BLOCK)
            fh.seek(offset)
        if header == bytes(BLOCK) or (offset > 0 and len(header) < BLOCK):
            # the end of the archive (only zero blocks may follow), or a header cut short
            yield None, partial(_check_tail, fh, offset, path)
            return
        fh.seek(offset)  # an unusual header (or an empty file): tarfile takes over from here
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            yield from ((m, partial(_tar_read, tar, m)) for m in tar)
            yield None, partial(_check_tail, fh, tar.offset, path)


def _plain_member(header: bytes) -> tarfile.TarInfo | None:
    """The member a plain ustar regular-file header describes; None for anything else."""
    if len(header) < BLOCK or header[257:265] != _USTAR or header[156] not in b"0\0":
        return None
    try:
        # NUL/space-terminated octal ('tarfile' fails the header on a bad one too; base-256
        # values start with 0x80/0xff and fail here)
        _, _, _, size, _, chksum = (int(header[a:b].split(b"\0", 1)[0].strip() or b"0", 8)
                                    for a, b in _NUMERIC_FIELDS)
    except ValueError:
        return None
    if size < 0 or chksum != sum(header[:148]) + 256 + sum(header[156:]):
        return None  # tarfile decides (it also accepts the signed-byte sum)
    raw = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0]
    name = (prefix + b"/" + raw if prefix else raw).decode("utf-8", "surrogateescape")
    if not raw or name.endswith("/"):
        return None  # old-style directory: tarfile's rules
    info = tarfile.TarInfo(name)
    info.size, info.type = size, tarfile.REGTYPE
    return info


def _read_exact(fh, at: int, size: int, name: str) -> bytes:
    fh.seek(at)
    data = fh.read(size)
    if len(data) != size:
        raise tarfile.ReadError(f"unexpected end of data in member {name!r}: {len(data)} of "
                                f"{size} bytes")
    return data


def _tar_read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(member)
    return fh.read() if fh is not None else b""


def _check_tail(fh, offset: int, path: Path) -> None:
    """A complete plain tar ends in zero blocks; tarfile stops silently at a header cut short
    or at garbage after a zero block."""
    fh.seek(offset)
    tail = fh.read()
    if len(tail) < BLOCK or tail.strip(b"\0"):
        raise tarfile.ReadError(f"{path.name} is truncated: no end-of-archive after byte "
                                f"{offset}")


def list_shards(folder: Path | str) -> list[Path]:
    shards = sorted(Path(folder).glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no .tar shards in {folder}; run the upstream stage first")
    return shards
