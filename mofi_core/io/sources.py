"""Where input shards come from: a folder, a glob or brace pattern, or a manifest of URLs.

``expand_sources(spec, root)`` turns ``ingest.input`` into an ordered list of shard sources:

- a folder: every ``*.tar`` / ``*.tar.gz`` / ``*.tgz`` in it, sorted;
- a glob pattern (``shards/*.tar``) or a brace pattern as webdataset writes them
  (``shards/{00000..00099}.tar``), expanded and kept in order;
- a manifest file (``*.txt``/``*.lst`` or ``@file``): one source per line, ``#`` comments;
  relative paths are relative to the manifest;
- ``http://``/``https://``/``file://`` URLs;
- ``s3://bucket/prefix/`` (every shard under the prefix), ``s3://bucket/shards/*.tar``,
  ``s3://bucket/{00000..00099}.tar`` or an ``s3://.../list.txt`` manifest, through boto3
  (endpoint, region and credentials from the environment: see ``mofi_core.io.s3``).

Relative paths are relative to the project root. ``open_source`` gives a local path to read
(streaming a URL to a temporary file first; S3 reads resume at the byte a dropped connection
reached). A shard that is not there (S3 ``NoSuchKey``, HTTP 404/410, a missing file) is a fact
about the corpus: ``FileNotFoundError``, which ingest lists as a lost shard. Anything else that
stops a fetch (no connection, timeouts, 5xx, throttling, refused or missing credentials) is a
fault of the store, never of the data: the fetch is retried with backoff (:class:`FetchPolicy`)
and then raises :class:`TransportError`.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from braceexpand import braceexpand

from mofi_core.io import s3
from mofi_core.io.hashing import file_sha256

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
URL_SCHEMES = ("http://", "https://", "file://", "s3://")
HTTP_TIMEOUT_S = 60


class SourceError(ValueError):
    """The input spec names nothing readable."""


class TransportError(RuntimeError):
    """A shard could not be fetched because the network, the server or the credentials failed:
    never a fact about the data (not an ``OSError``, so no reader mistakes it for a damaged
    shard). The shard is not marked done; the stage fails and a re-run fetches it again."""


@dataclass(frozen=True)
class FetchPolicy:
    """How often a failed fetch of one shard is retried, with exponential backoff, before the
    stage fails: ``attempts`` tries, waiting ``backoff_s``, 2x, 4x ... between them (on top of
    botocore's own per-request retries)."""

    attempts: int = 4
    backoff_s: float = 2.0

    def waits(self) -> list[float]:
        return [self.backoff_s * 2 ** i for i in range(max(0, self.attempts - 1))]


def _is_url(s: str) -> bool:
    return s.startswith(URL_SCHEMES)


def _resolve(item: str, base: Path) -> str:
    if _is_url(item):
        return item
    if "://" in item:
        scheme = item.split("://", 1)[0]
        raise SourceError(f"input {item!r}: scheme {scheme}:// is not supported (use a local "
                          "path, file://, http://, https:// or s3://)")
    p = Path(item)
    return str(p if p.is_absolute() else base / p)


def _folder(path: Path) -> list[str]:
    found = sorted(str(p) for p in path.iterdir() if p.name.endswith(SHARD_SUFFIXES))
    if not found:
        raise SourceError(f"no .tar shards in {path}; run the upstream stage first or point "
                          "ingest.input at the shards")
    return found


def _manifest(path: Path | str) -> list[str]:
    if s3.is_s3(path):
        text = s3.read_bytes(str(path)).decode("utf-8")
        lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
        base = str(path).rsplit("/", 1)[0]
        items = [ln if "://" in ln else f"{base}/{ln}" for ln in lines if ln]
    else:
        path = Path(path)
        lines = [ln.split("#", 1)[0].strip()
                 for ln in path.read_text(encoding="utf-8").splitlines()]
        items = [_resolve(ln, path.parent) for ln in lines if ln]
    if not items:
        raise SourceError(f"manifest {path} lists no shards")
    return items


def _s3_item(url: str) -> list[str]:
    """An s3 input: a prefix ending in '/', a pattern, a manifest, or one object."""
    if url.endswith("/"):
        found = [u for u, _ in s3.list_objects(url) if u.endswith(SHARD_SUFFIXES)
                 and "/" not in u[len(url):]]
        if not found:
            raise SourceError(f"no .tar shards under {url}")
        return found
    if glob.has_magic(url):
        found = s3.glob(url)
        if not found:
            raise SourceError(f"ingest.input pattern {url!r} matches no object")
        return found
    if url.endswith((".txt", ".lst")):
        return _manifest(url)
    return [url]


def expand_sources(spec: str, root: Path) -> list[str]:
    """The ordered shard sources named by ``spec`` (see module docstring)."""
    spec = spec.strip()
    if not spec:
        raise SourceError("ingest.input is empty")
    if spec.startswith("@"):
        target = _resolve(spec[1:], root)
        return _manifest(target if s3.is_s3(target) else Path(target))
    out: list[str] = []
    for item in braceexpand(spec):
        resolved = _resolve(item, root)
        if s3.is_s3(resolved):
            out.extend(_s3_item(resolved))
            continue
        if _is_url(resolved):
            out.append(resolved)
            continue
        path = Path(resolved)
        if path.is_dir():
            out.extend(_folder(path))
        elif path.suffix in (".txt", ".lst") and path.is_file():
            out.extend(_manifest(path))
        elif glob.has_magic(resolved):
            matches = sorted(glob.glob(resolved))
            if not matches:
                raise SourceError(f"ingest.input pattern {item!r} matches no file")
            out.extend(matches)
        elif not path.exists() and not path.name.endswith(SHARD_SUFFIXES):
            raise SourceError(f"ingest.input: {resolved} does not exist (not a folder, a list "
                              "file or a shard); check the path")
        else:
            out.append(resolved)  # a missing shard becomes a rejected shard, named in rejects
    if not out:
        raise SourceError(f"ingest.input {spec!r} names no shard")
    return out


def missing_local(sources: list[str]) -> list[str]:
    """The local (path or file://) sources that do not exist."""
    return [s for s in sources if (p := _local_path(s)) is not None and not p.exists()]


def source_name(source: str) -> str:
    """The shard's file name, for rejects tables and messages."""
    return Path(urllib.parse.urlparse(source).path if _is_url(source) else source).name


def _local_path(source: str) -> Path | None:
    if source.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path))
    if _is_url(source):
        return None
    return Path(source)


def source_identity(source: str) -> str | None:
    """Content identity: sha256 of a local file; ETag / Last-Modified + length of a URL
    (``None`` when the server gives neither, or the source is unreachable: never skipped)."""
    local = _local_path(source)
    if local is not None:
        return f"sha256:{file_sha256(local)}" if local.is_file() else None
    if s3.is_s3(source):
        try:
            return s3.identity(source)
        except s3.S3NotFound:
            return None  # missing: never skipped, and rejected as a missing shard
        except s3.S3Error as err:  # the store failed, not the data: stop before any work
            raise TransportError(f"shard {source}: {err}") from None
    try:
        # only http(s) reaches here: file:// and paths were handled above
        req = urllib.request.Request(source, method="HEAD")  # noqa: S310
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:  # noqa: S310
            tag = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
            length = resp.headers.get("Content-Length")
    except (urllib.error.URLError, OSError):
        return None
    return f"http:{tag}:{length}" if tag else None


def _http_status_missing(err: Exception) -> bool:
    return isinstance(err, urllib.error.HTTPError) and err.code in (404, 410)


def _fetch(source: str, dest: Path) -> None:
    """One attempt to copy a remote shard to ``dest``. A shard that is not there raises
    ``FileNotFoundError`` (a data fact); any other failure raises ``TransportError``."""
    if s3.is_s3(source):
        try:
            s3.download(source, dest)
        except s3.S3NotFound as err:
            raise FileNotFoundError(f"shard {source} does not exist ({err})") from None
        except s3.S3Error as err:  # unreachable, throttled, refused, changed mid-read
            raise TransportError(str(err)) from None
        except OSError as err:  # the local copy could not be written (disk full, ...)
            raise TransportError(f"copying {source} to {dest}: {err}") from None
        return
    try:
        with open(dest, "wb") as out, \
                urllib.request.urlopen(source, timeout=HTTP_TIMEOUT_S) as resp:  # noqa: S310
            shutil.copyfileobj(resp, out, 1 << 20)
    except urllib.error.HTTPError as err:
        if _http_status_missing(err):
            raise FileNotFoundError(f"shard {source} does not exist (HTTP {err.code})") from None
        raise TransportError(f"fetching {source}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise TransportError(f"fetching {source}: {err}") from None


def fetch_with_retries(source: str, dest: Path, policy: FetchPolicy) -> None:
    """:func:`_fetch`, retried on transport failures; the last one names the shard, the
    attempts and what to check."""
    waits = policy.waits()
    for attempt in range(len(waits) + 1):
        try:
            _fetch(source, dest)
            return
        except TransportError as err:
            if attempt == len(waits):
                raise TransportError(
                    f"{source} could not be fetched in {attempt + 1} attempt(s) over "
                    f"{sum(waits):.1f} s of backoff: {err}; nothing was marked done, re-run the "
                    "stage when the store is reachable") from None
            time.sleep(waits[attempt])


@contextlib.contextmanager
def open_source(source: str, tmp_dir: Path | None = None,
                policy: FetchPolicy = FetchPolicy()) -> Iterator[Path]:
    """A local path holding the shard. A URL is fetched (with retries, see
    :func:`fetch_with_retries`) to a temporary file in ``tmp_dir`` (never an output folder),
    removed after. A shard that does not exist raises ``FileNotFoundError``; a fetch the network
    or the store keeps failing raises :class:`TransportError`."""
    local = _local_path(source)
    if local is not None:
        if not local.is_file():
            raise FileNotFoundError(f"shard {source} does not exist")
        yield local
        return
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".fetch-", suffix=".tar", dir=tmp_dir)
    os.close(fd)
    try:
        fetch_with_retries(source, Path(name), policy)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
