"""``s3://bucket/key`` access through boto3: streaming reads that survive dropped connections,
atomic multipart uploads, listing and globbing.

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
overwrite is an error rather than a silent mix of two versions.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import io
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEME = "s3://"
MB = 1 << 20


class S3Error(OSError):
    """An S3 operation failed for good (after retries), naming the object."""


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


@functools.lru_cache(maxsize=8)
def _client_for(endpoint: str | None, profile: str | None, region: str | None, attempts: int,
                _credentials_id: str):
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=profile)
    config = Config(retries={"max_attempts": attempts, "mode": "adaptive"},
                    connect_timeout=10, read_timeout=60, tcp_keepalive=True,
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
                       int(os.environ.get("MOFI_S3_MAX_ATTEMPTS", "10")), creds)


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
                    raise S3Error(f"reading {self.url} failed at byte {self.pos} of "
                                  f"{self.size} after {self.retries} retries: {err}") from err
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
        raise S3Error(f"{fn.__name__} {url}: {err} (endpoint {_endpoint() or 'AWS'})") from None


def _client_error(op: str, url: str, err) -> S3Error:
    """An S3 error reply as an :class:`S3Error` naming the object and what to check."""
    code = err.response.get("Error", {}).get("Code", "?")
    hint = {"NoSuchKey": "the object does not exist", "404": "the object does not exist",
            "NoSuchBucket": "create the bucket first",
            "AccessDenied": "check the credentials in the environment / AWS_PROFILE",
            "403": "check the credentials in the environment / AWS_PROFILE",
            "PreconditionFailed": "the object changed while it was being read",
            "412": "the object changed while it was being read"}.get(code, "")
    return S3Error(f"{op} {url}: {code} {err}" + (f" ({hint})" if hint else ""))


def read_bytes(url: str) -> bytes:
    with io.BufferedReader(S3Reader(url), buffer_size=8 * MB) as fh:
        return fh.read()


def head(url: str) -> dict:
    loc = S3Url.parse(url)
    return _call(client().head_object, url, Bucket=loc.bucket, Key=loc.key)


def exists(url: str) -> bool:
    from botocore.exceptions import ClientError

    loc = S3Url.parse(url)
    try:
        client().head_object(Bucket=loc.bucket, Key=loc.key)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _client_error("head_object", url, err) from None


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


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    part = int(os.environ.get("MOFI_S3_MULTIPART_MB", "64")) * MB  # S3's minimum part: 5 MB
    return TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                          max_concurrency=4, use_threads=True)


def upload(local: Path | str, url: str) -> None:
    """Publish a local file at ``url`` atomically: upload (multipart above
    ``MOFI_S3_MULTIPART_MB``, default 64 MB) to a
    temporary key, copy it onto the final key, delete the temporary one. Readers of ``url``
    see the old object or the new one, never a part."""
    loc = S3Url.parse(url)
    tmp = f"{loc.key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    c = client()
    try:
        try:
            c.upload_file(str(local), loc.bucket, tmp, Config=_transfer_config())
            c.copy({"Bucket": loc.bucket, "Key": tmp}, loc.bucket, loc.key,
                   Config=_transfer_config())
        except Exception as err:  # boto3 transfer errors come in several families
            raise S3Error(f"uploading {local} to {url} failed: {err}") from err
    finally:
        try:
            c.delete_object(Bucket=loc.bucket, Key=tmp)
        except Exception as err:  # a leftover temp key is harmless; say so, do not mask
            print(f"s3: could not delete temporary {SCHEME}{loc.bucket}/{tmp}: {err}")


def write_bytes(url: str, data: bytes) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile(prefix=".mofi-upload-") as fh:
        fh.write(data)
        fh.flush()
        upload(fh.name, url)


def delete(url: str) -> None:
    loc = S3Url.parse(url)
    _call(client().delete_object, url, Bucket=loc.bucket, Key=loc.key)


def list_objects(prefix_url: str) -> Iterator[tuple[str, int]]:
    """(url, size) of every object under a prefix, in key order."""
    loc = S3Url.parse(prefix_url)
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket,
                                                               Prefix=loc.key)
    try:
        for page in pages:
            for obj in page.get("Contents", []):
                yield f"{SCHEME}{loc.bucket}/{obj['Key']}", int(obj["Size"])
    except Exception as err:
        raise S3Error(f"listing {prefix_url} failed: {err}") from err


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
