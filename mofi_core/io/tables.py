"""Parquet tables between stages, each with a declared schema checked where it is read."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mofi_core.io.atomic import atomic_path

KB = pa.schema([
    ("entity_id", pa.string()), ("name", pa.string()), ("aliases", pa.list_(pa.string())),
    ("description", pa.string()), ("type", pa.string()),
    ("popularity", pa.int32()),  # Wikidata sitelinks; a KB file may leave it out (0)
])
KB_REQUIRED = ("entity_id", "name", "aliases", "description", "type")
TRUTH = pa.schema([("key", pa.string()), ("entity_ids", pa.list_(pa.string()))])
MANIFEST = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("sha256", pa.string()), ("text", pa.string()), ("duplicate_of", pa.string()),
])
REJECTS = pa.schema([("key", pa.string()), ("shard", pa.string()), ("reason", pa.string())])
MENTIONS = pa.schema([
    ("key", pa.string()), ("mention", pa.string()), ("start", pa.int32()), ("end", pa.int32()),
    ("label", pa.string()), ("source", pa.string()), ("entity_id", pa.string()),
    ("link_score", pa.float32()),
])
SCORES = pa.schema([("key", pa.string()), ("entity_id", pa.string()), ("score", pa.float32())])
NULL_SCORES = pa.schema([("key", pa.string()), ("scores", pa.list_(pa.float32()))])
LABELS = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("entity_ids", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float32())),
])


class SchemaError(ValueError):
    """A table between stages does not have the columns/types its reader expects."""


def write_table(path: Path | str, table: pa.Table, schema: pa.Schema) -> None:
    """Cast to ``schema`` (column order and types) and publish atomically."""
    try:
        table = table.select(schema.names).cast(schema)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise SchemaError(f"cannot write {path}: {err}; expected {schema}") from err
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: Path | str, schema: pa.Schema) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the stage that produces it first")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise SchemaError(f"{path}: not a readable parquet file ({err}); re-create it with the "
                          "stage or tool that writes it") from None
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise SchemaError(f"{path}: missing columns {missing}; expected {schema.names}")
    table = table.select(schema.names)
    for f in schema:
        if not table.schema.field(f.name).type.equals(f.type):
            raise SchemaError(f"{path}: column {f.name!r} is {table.schema.field(f.name).type}, "
                              f"expected {f.type}")
    return table


def read_kb(path: Path | str) -> pa.Table:
    """A KB table (``KB``): the required columns as declared; ``popularity`` any integer type
    (cast to int32, null as 0), or left out (0)."""
    path = Path(path)
    table = read_table(path, pa.schema([KB.field(n) for n in KB_REQUIRED]))
    if "popularity" not in pq.read_schema(path).names:
        pop = pa.array(np.zeros(table.num_rows, dtype=np.int32))
    else:
        col = pq.read_table(path, columns=["popularity"])["popularity"]
        if not pa.types.is_integer(col.type):
            raise SchemaError(f"{path}: column 'popularity' is {col.type}, expected integers "
                              "(sitelinks)")
        pop = pc.fill_null(col, 0).cast(pa.int32())
    return table.append_column(KB.field("popularity"), pop)


def from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def write_batches(path: Path | str, batches: Iterable[pa.RecordBatch], schema: pa.Schema
                  ) -> int:
    """Stream record batches (each one row group) into one parquet file, published
    atomically. Returns the row count."""
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for batch in batches:
            writer.write_batch(batch.cast(schema) if batch.schema != schema else batch)
            rows += batch.num_rows
    return rows


def concat_parts(parts: list[Path], out: Path | str, schema: pa.Schema) -> int:
    """Concatenate per-shard tables into one file, one row group per part, streaming (one
    part in memory at a time); published atomically. Returns the row count."""
    rows = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            table = read_table(part, schema)
            writer.write_table(table)
            rows += table.num_rows
    return rows
