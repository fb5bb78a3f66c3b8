"""The validation gate as a check any consumer of the I2E dataset runs before it starts.

``validate`` records in ``reports/validate.json`` what it checked: the identity of the I2E
dataset (hashes of its tables, name and size of each shard). ``train`` (``mofi train``,
``dvc repro -s train``, torchrun, Prefect) refuses to start when that report is missing, says the
validation failed, or describes other data than the dataset it is about to read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mofi_core.io import s3
from mofi_core.io.hashing import file_sha256

HASHED = ("labels.parquet", "vocab.json", "stats.json")


class GateClosed(RuntimeError):
    """Training data that did not pass (or was never checked by) the validation gate."""


def i2e_identity(location: Path | str) -> dict:
    """What identifies an I2E dataset folder (local or ``s3://``): its tables' SHA-256 and each
    shard's name and size."""
    if s3.is_s3(location):
        base = str(location).rstrip("/")
        shards = [[u.rsplit("/", 1)[1], size] for u, size in s3.list_objects(f"{base}/shards/")
                  if u.endswith(".tar")]
        tables = {n: hashlib.sha256(s3.read_bytes(f"{base}/{n}")).hexdigest()
                  for n in HASHED if s3.exists(f"{base}/{n}")}
        return {"tables": tables, "shards": shards}
    folder = Path(location)
    shards = [[p.name, p.stat().st_size] for p in sorted((folder / "shards").glob("*.tar"))]
    tables = {n: file_sha256(folder / n) for n in HASHED if (folder / n).is_file()}
    return {"tables": tables, "shards": shards}


def require_passed(report: Path, data: Path | str) -> None:
    """Raise :class:`GateClosed` (one line, naming the report and what to do) unless the last
    validation passed on exactly the dataset at ``data``."""
    if not report.is_file():
        raise GateClosed(f"{report} is missing: the I2E dataset has not been validated; run "
                         "stage 'validate' first (dvc repro -s validate, or mofi validate)")
    try:
        got = json.loads(report.read_text(encoding="utf-8"))
        summary, checked = got["summary"], got.get("checked")
    except (ValueError, KeyError, TypeError) as err:
        raise GateClosed(f"{report} is not a validation report ({err}); run stage 'validate' "
                         "again") from None
    if not summary.get("success"):
        raise GateClosed(f"the last validation failed ({summary.get('failed')} expectations, see "
                         f"{report}): fix the data or the params, then run stage 'validate' "
                         "again")
    if checked != i2e_identity(data):
        raise GateClosed(f"{report} validated other data than {data} holds now (build ran again "
                         "since, or the folder changed): run stage 'validate' again")
