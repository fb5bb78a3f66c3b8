"""Content identities: file hashes and stable fingerprints of JSON-able parts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digests(path: Path | str, chunk: int = 1 << 20) -> tuple[str, str]:
    """(SHA-256, MD5) of a file in one read: the content identity and the hash DVC records."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (params dumps, model hashes, ...)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dvc_hash(md5s: dict[str, str]) -> str:
    """DVC 3's hash of an output from its files' MD5s (``{"": md5}`` for a one-file output):
    the file's MD5; for a folder, the MD5 of its listing as DVC serialises it (dvc_data's
    ``Tree.as_bytes``: entries ``{"md5", "relpath"}`` sorted by relpath, ``json.dumps`` with
    sorted keys) followed by ``.dir``."""
    if set(md5s) == {""}:
        return md5s[""]
    listing = sorted(({"md5": md5, "relpath": rel} for rel, md5 in md5s.items()),
                     key=lambda entry: entry["relpath"])
    text = json.dumps(listing, sort_keys=True).encode("utf-8")
    return hashlib.md5(text, usedforsecurity=False).hexdigest() + ".dir"


def dvc_hash_of_path(path: Path) -> str:
    """The hash DVC records for a local file or folder (what ``dvc.lock`` would say)."""
    path = Path(path)
    if path.is_file():
        return file_digests(path)[1]
    files = sorted(f for f in path.rglob("*") if f.is_file())
    return dvc_hash({f.relative_to(path).as_posix(): file_digests(f)[1] for f in files})
