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
