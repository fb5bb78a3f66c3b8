"""``s3://bucket/key`` access through boto3: streaming reads that survive dropped connections,
atomic uploads (one PUT, multipart above a threshold), listing, batched deletes and globbing.

Where the objects live is configuration of the environment, never of params (moving data must not
re-run a stage) and never a credential in a file the project writes. boto3's own settings are
used as they are:

- ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for an S3-compatible store (MinIO,
  SeaweedFS, Ceph); path-style addressing is used whenever an endpoint is set;
- ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; ``AWS_PROFILE`` for a named profile;
- credentials from the environment, a profile, or the instance/pod role.

API calls retry throttling, 5xx and connection errors with backoff (botocore ``adaptive`` mode,
``MOFI_S3_MAX_ATTEMPTS``, default 10). A streaming read that loses its connection reopens the
object at the byte it had reached (``Range``), pinned to the object's ETag so a concurrent
overwrite is an error rather than a silent mix of two versions. Callers that transfer many
objects use ``MOFI_S3_CONCURRENCY`` threads (default 16; :func:`concurrency`) on the one client.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

SCHEME = "s3://"
MB = 1 << 20
T = TypeVar("T")
R = TypeVar("R")


class S3Error(OSError):
    """An S3 operation failed for good (after retries), naming the object."""


class S3NotFound(S3Error):
    """The object (or bucket) is not there: a fact about the data, not a passing fault."""


class S3Unavailable(S3Error):
    """The store could not be used: connection, timeout, server error or throttling that
    outlasted the retries. Never a fact about the data; retrying later may succeed."""


class S3AccessDenied(S3Unavailable):
    """Credentials are missing, wrong or lack permission for the object."""


_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})
_DENIED = frozenset({"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "ExpiredToken", "InvalidToken", "AccountProblem"})


def is_s3(path: str | Path) -> bool:
    return str(path).startswith(SCHEME)


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        if not is_s3(url):
            raise ValueError(f"not an s3:// URL: {url!r}")
        bucket, _, key = url[len(SCHEME):].partition("/")
        if not bucket:
            raise ValueError(f"s3 URL {url!r} has no bucket")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    def child(self, name: str) -> S3Url:
        return S3Url(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key else name)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def endpoint_name() -> str:
    """The endpoint in force, for messages: the configured URL, or "AWS"."""
    return _endpoint() or "AWS"


def concurrency() -> int:
    """Parallel transfers per call (``MOFI_S3_CONCURRENCY``, default 16)."""
    raw = os.environ.get("MOFI_S3_CONCURRENCY", "16")
    try:
        width = int(raw)
    except ValueError:
        raise ValueError(f"MOFI_S3_CONCURRENCY={raw!r} is not a whole number (e.g. 16)") from None
    if width < 1:
        raise ValueError(f"MOFI_S3_CONCURRENCY={width} must be at least 1")
    return width


def map_parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on :func:`concurrency` threads, results in order. The first
    failure is raised once the calls already running have ended; the others never start."""
    items = list(items)
    width = min(concurrency(), len(items))
    if width <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(width, thread_name_prefix="mofi-s3")
    try:
        futures = [pool.submit(fn, x) for x in items]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@functools.lru_cache(maxsize=8)
def _client_for(endpoint: str | None, profile: str | None, region: str | None, attempts: int,
                pool: int, _credentials_id: str):
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=profile)
    config = Config(retries={"max_attempts": attempts, "mode": "adaptive"},
                    connect_timeout=10, read_timeout=60, tcp_keepalive=True,
                    max_pool_connections=pool,
                    s3={"addressing_style": "path"} if endpoint else None)
    return session.client("s3", endpoint_url=endpoint, region_name=region or "us-east-1",
                          config=config)


def client():
    """The process's S3 client for the current environment (cached; boto3 clients are
    thread-safe). Re-read on every call so tests and tools can switch endpoints."""
    # environment credentials are part of the cache key (as a digest, never kept in clear)
    creds = hashlib.sha256("\0".join(os.environ.get(k, "") for k in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")).encode()).hexdigest()
    return _client_for(_endpoint(), os.environ.get("AWS_PROFILE") or None,
                       os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
                       int(os.environ.get("MOFI_S3_MAX_ATTEMPTS", "10")),
                       max(10, concurrency() + 4), creds)  # a connection per transfer thread


def _transient_errors() -> tuple[type[BaseException], ...]:
    from botocore import exceptions as bx
    from urllib3 import exceptions as ux

    return (bx.ConnectionError, bx.ReadTimeoutError, bx.ResponseStreamingError,
            bx.IncompleteReadError, ux.ProtocolError, ux.ReadTimeoutError, ConnectionError,
            TimeoutError)


class S3Reader(io.RawIOBase):
    """A read-only, forward-streaming file over one object. A broken connection is reopened
    at the current offset (up to ``retries`` times in a row, exponential backoff)."""

    def __init__(self, url: str, retries: int = 8, backoff_s: float = 0.2) -> None:
        super().__init__()
        self.url, self.loc = url, S3Url.parse(url)
        self.retries, self.backoff_s = retries, backoff_s
        self._client = client()
        head = _call(self._client.head_object, url, Bucket=self.loc.bucket, Key=self.loc.key)
        self.size, self.etag = int(head["ContentLength"]), head["ETag"]
        self.pos, self._body, self.reopened = 0, None, 0

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        resp = _call(self._client.get_object, self.url, Bucket=self.loc.bucket,
                     Key=self.loc.key, Range=f"bytes={self.pos}-", IfMatch=self.etag)
        self._body = resp["Body"]

    def _drop(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except _transient_errors():
                pass  # the connection is already broken; we reopen anyway
            self._body = None

    def readinto(self, buf) -> int:
        if self.pos >= self.size or len(buf) == 0:
            return 0
        failures = 0
        while True:
            try:
                if self._body is None:
                    self._open()
                data = self._body.read(min(len(buf), self.size - self.pos))
                if not data:  # closed cleanly but early: the stream was cut
                    raise ConnectionError(f"stream ended at byte {self.pos} of {self.size}")
                n = len(data)
                buf[:n] = data
                self.pos += n
                return n
            except _transient_errors() as err:
                self._drop()
                failures += 1
                if failures > self.retries:
                    raise S3Unavailable(
                        f"reading {self.url} failed at byte {self.pos} of {self.size} after "
                        f"{self.retries} retries: {err} (endpoint {_endpoint() or 'AWS'}; "
                        "check that the S3 server is up)") from err
                self.reopened += 1
                time.sleep(self.backoff_s * 2 ** (failures - 1))

    def close(self) -> None:
        self._drop()
        super().close()


def _call(fn, url: str, **kwargs):
    """One API call (botocore retries transient failures itself); a final failure names the
    object and what to check."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as err:
        raise _client_error(fn.__name__, url, err) from None
    except BotoCoreError as err:
        raise botocore_error(fn.__name__, url, err) from None


def botocore_error(op: str, url: str, err: Exception) -> S3Unavailable:
    """A client-side failure (no connection, timeout, no credentials) naming the object, the
    endpoint and what to check."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    where = f"endpoint {_endpoint() or 'AWS'}"
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return S3AccessDenied(f"{op} {url}: {err} ({where}; set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY or AWS_PROFILE in this process's "
                              "environment: a Dask worker needs them in its own)")
    return S3Unavailable(f"{op} {url}: {err} ({where}; check that the S3 server is up and "
                         "reachable from this machine)")


def _client_error(op: str, url: str, err) -> S3Error:
    """An S3 error reply as an :class:`S3Error` naming the object and what to check."""
    code = str(err.response.get("Error", {}).get("Code", "?"))
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    hint = {"NoSuchKey": "the object does not exist", "404": "the object does not exist",
            "NoSuchBucket": "create the bucket first (mofi storage create-bucket URL)",
            "PreconditionFailed": "the object changed while it was being read",
            "412": "the object changed while it was being read"}.get(code, "")
    if code in _DENIED:
        hint = (f"check the credentials in this process's environment / AWS_PROFILE for "
                f"endpoint {_endpoint() or 'AWS'}")
    text = f"{op} {url}: {code} {err}" + (f" ({hint})" if hint else "")
    if code in _NOT_FOUND:
        return S3NotFound(text)
    if code in _DENIED:
        return S3AccessDenied(text)
    if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError",
                                 "RequestTimeout", "Throttling"):
        return S3Unavailable(text + f" (endpoint {_endpoint() or 'AWS'}: the server is "
                             "failing; retry when it is back)")
    return S3Error(text)


def read_bytes(url: str) -> bytes:
    with io.BufferedReader(S3Reader(url), buffer_size=8 * MB) as fh:
        return fh.read()


def head(url: str) -> dict:
    loc = S3Url.parse(url)
    return _call(client().head_object, url, Bucket=loc.bucket, Key=loc.key)


def exists(url: str) -> bool:
    """Whether the object is there; a store that cannot answer is an error, never "no"."""
    try:
        head(url)
        return True
    except S3NotFound:
        return False


def identity(url: str) -> str:
    """Content identity for resume decisions: ETag and length."""
    h = head(url)
    return f"s3:{h['ETag']}:{h['ContentLength']}"


def download(url: str, dest: Path) -> Path:
    """Stream an object to ``dest`` (resuming broken reads); returns ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with S3Reader(url) as src, open(dest, "wb") as out:
        while block := src.read(8 * MB):
            out.write(block)
    return dest


def _multipart_threshold() -> int:
    return int(os.environ.get("MOFI_S3_MULTIPART_MB", "64")) * MB  # S3's minimum part: 5 MB


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    part = _multipart_threshold()
    return TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                          max_concurrency=4, use_threads=True)


def _etag(value: str) -> str:
    return value.strip('"')


def upload(local: Path | str, url: str) -> str:
    """Publish a local file at ``url``; returns the new object's ETag (without quotes).

    Atomic without a temporary key: S3 (and MinIO, SeaweedFS, Ceph) commits a PUT, and a
    CompleteMultipartUpload, as a whole, so a reader of ``url`` gets the old object or the new
    one, never a part. Below ``MOFI_S3_MULTIPART_MB`` (default 64 MB) it is one PUT; above, a
    multipart upload whose parts stay invisible until it completes (boto3 aborts it on failure;
    a killed process leaves parts that only a bucket lifecycle rule removes, never a partial
    object)."""
    loc = S3Url.parse(url)
    c = client()
    if Path(local).stat().st_size < _multipart_threshold():
        with open(local, "rb") as body:
            resp = _call(c.put_object, url, Bucket=loc.bucket, Key=loc.key, Body=body)
        return _etag(resp["ETag"])
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        c.upload_file(str(local), loc.bucket, loc.key, Config=_transfer_config())
    except S3UploadFailedError as err:  # boto3 wraps the server's reply; classify that
        cause = err.__context__
        if isinstance(cause, ClientError):
            raise _client_error("upload", url, cause) from None
        raise S3Error(f"uploading {local} to {url} failed: {err}") from None
    except ClientError as err:
        raise _client_error("upload", url, err) from None
    except BotoCoreError as err:
        raise botocore_error("upload", url, err) from None
    return _etag(head(url)["ETag"])  # the multipart ETag, as the listing will show it


def write_bytes(url: str, data: bytes) -> str:
    """Write ``data`` at ``url`` in one PUT (atomic, see :func:`upload`); returns the ETag."""
    loc = S3Url.parse(url)
    return _etag(_call(client().put_object, url, Bucket=loc.bucket, Key=loc.key,
                       Body=data)["ETag"])


def delete(url: str) -> None:
    loc = S3Url.parse(url)
    _call(client().delete_object, url, Bucket=loc.bucket, Key=loc.key)


def delete_many(urls: Iterable[str]) -> int:
    """Delete objects with ``DeleteObjects`` (1000 keys per request); returns how many. Keys
    that are already gone count as deleted (S3 reports them so)."""
    by_bucket: dict[str, list[str]] = {}
    for url in urls:
        loc = S3Url.parse(url)
        by_bucket.setdefault(loc.bucket, []).append(loc.key)
    done = 0
    for bucket, keys in by_bucket.items():
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            first = f"{SCHEME}{bucket}/{batch[0]}"
            resp = _call(client().delete_objects, first, Bucket=bucket,
                         Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                e = errors[0]
                raise S3Error(f"delete_objects {SCHEME}{bucket}/{e.get('Key')}: "
                              f"{e.get('Code')} {e.get('Message', '')} ({len(errors)} of "
                              f"{len(batch)} keys not deleted; endpoint {endpoint_name()})")
            done += len(batch)
    return done


def create_bucket(url: str) -> bool:
    """Create the bucket of ``url`` if it is not there; True if created, False if it already
    existed and is usable with these credentials. A bucket that exists but is someone else's
    is an error."""
    from botocore.exceptions import BotoCoreError, ClientError

    loc = S3Url.parse(url)
    c = client()
    try:
        _call(c.head_bucket, url, Bucket=loc.bucket)
        return False
    except S3NotFound:
        pass  # not there: create it below
    region = c.meta.region_name
    where = ({"CreateBucketConfiguration": {"LocationConstraint": region}}
             if region and region != "us-east-1" and not _endpoint() else {})
    try:
        c.create_bucket(Bucket=loc.bucket, **where)
        return True
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code == "BucketAlreadyOwnedByYou":  # created meanwhile, by us
            return False
        if code == "BucketAlreadyExists":
            raise S3Error(f"create_bucket {SCHEME}{loc.bucket}: the name is taken by another "
                          "account (bucket names are global on AWS): choose another "
                          "name") from None
        raise _client_error("create_bucket", url, err) from None
    except BotoCoreError as err:
        raise botocore_error("create_bucket", url, err) from None


def list_objects_etag(prefix_url: str) -> Iterator[tuple[str, int, str]]:
    """(url, size, ETag without quotes) of every object under a prefix, in key order: one
    request per 1000 objects."""
    loc = S3Url.parse(prefix_url)
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket,
                                                               Prefix=loc.key)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        for page in pages:
            for obj in page.get("Contents", []):
                yield (f"{SCHEME}{loc.bucket}/{obj['Key']}", int(obj["Size"]),
                       _etag(obj.get("ETag", "")))
    except ClientError as err:
        raise _client_error("list_objects_v2", prefix_url, err) from None
    except BotoCoreError as err:
        raise botocore_error("list_objects_v2", prefix_url, err) from None


def list_objects(prefix_url: str) -> Iterator[tuple[str, int]]:
    """(url, size) of every object under a prefix, in key order."""
    for url, size, _ in list_objects_etag(prefix_url):
        yield url, size


def glob(pattern_url: str) -> list[str]:
    """Objects matching a shell pattern (``*``, ``?``, ``[...]``; ``*`` does not cross ``/``)."""
    loc = S3Url.parse(pattern_url)
    magic = min((i for i, ch in enumerate(loc.key) if ch in "*?["), default=len(loc.key))
    prefix = loc.key[:magic]
    depth = loc.key.count("/")
    out = []
    for url, _ in list_objects(f"{SCHEME}{loc.bucket}/{prefix}"):
        key = S3Url.parse(url).key
        if key.count("/") == depth and fnmatch.fnmatchcase(key, loc.key):
            out.append(url)
    return sorted(out)


def upload_dir(local: Path, url: str, last: str | None = None) -> int:
    """Every file under ``local`` to ``url/<relative path>``, each atomically, in path order;
    a file named ``last`` goes after all others (a completion marker for readers)."""
    base = S3Url.parse(url)
    files = sorted((p for p in local.rglob("*") if p.is_file()),
                   key=lambda p: (p.name == last, p.as_posix()))
    for f in files:
        upload(f, str(base.child(f.relative_to(local).as_posix())))
    return len(files)


def download_dir(url: str, local: Path) -> int:
    base = S3Url.parse(url)
    prefix = base.key.rstrip("/") + "/"
    n = 0
    for obj, _ in list_objects(f"{SCHEME}{base.bucket}/{prefix}"):
        rel = S3Url.parse(obj).key[len(prefix):]
        if ".tmp-" in rel:
            continue
        download(obj, local / rel)
        n += 1
    return n


def register_webdataset_scheme() -> None:
    """Let ``webdataset`` open ``s3://`` shard URLs with the retrying reader (webdataset 1.0
    ships no s3 scheme)."""
    import webdataset

    def _gopen_s3(url, mode="rb", bufsize=8 * MB, **_):
        if "r" not in mode:
            raise ValueError(f"webdataset s3 opener is read-only (mode {mode!r} for {url})")
        return io.BufferedReader(S3Reader(url), buffer_size=bufsize)

    webdataset.gopen_schemes["s3"] = _gopen_s3
