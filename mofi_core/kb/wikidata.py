"""Stream a Wikidata JSON dump into the KB format (``tables.KB``).

The dump (``latest-all.json.bz2``/``.gz``) is one JSON array with one entity per line, each line
ending in a comma. It is read line by line and written in row groups, so memory stays flat on the
full ~100 GB dump. An entity is kept when it is an item with a label in the chosen language, has at
least ``min_sitelinks`` sitelinks (a popularity filter), and one of its P31 ("instance of") values
is in the type map; its KB type is the mapped name of the first such value.
"""

from __future__ import annotations

import bz2
import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from mofi_core.io import tables
from mofi_core.io.atomic import atomic_path

# A small default mapping of P31 classes to KB types; pass your own for real use.
DEFAULT_TYPE_MAP = {
    "Q5": "person",
    "Q570116": "landmark",  # tourist attraction
    "Q4989906": "landmark",  # monument
    "Q12280": "landmark",  # bridge
    "Q8502": "landmark",  # mountain
    "Q4830453": "organization",  # business
    "Q43229": "organization",
    "Q2424752": "product",
    "Q16521": "species",  # taxon
    "Q515": "place",  # city
    "Q6256": "place",  # country
}


@dataclass
class ImportStats:
    lines: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"lines": self.lines, "kept": self.kept, "skipped": dict(self.skipped)}


def open_dump(path: Path) -> IO[str]:
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def iter_entities(lines: Iterator[str], stats: ImportStats) -> Iterator[dict]:
    for n, line in enumerate(lines, 1):
        line = line.strip().rstrip(",")
        if line in ("", "[", "]"):
            continue
        stats.lines += 1
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"dump line {n} is not JSON ({err.msg}); is this a Wikidata JSON "
                             "dump (not the RDF/TTL one)?") from None


def _p31(entity: dict) -> list[str]:
    out = []
    for claim in entity.get("claims", {}).get("P31", []):
        value = claim.get("mainsnak", {}).get("datavalue", {}).get("value", {})
        if isinstance(value, dict) and value.get("id"):
            out.append(value["id"])
    return out


def to_kb_row(entity: dict, type_map: dict[str, str], language: str, min_sitelinks: int
              ) -> tuple[dict | None, str]:
    """(KB row, "") when kept, else (None, reason skipped)."""
    if entity.get("type") != "item":
        return None, "not an item"
    label = entity.get("labels", {}).get(language, {}).get("value")
    if not label:
        return None, f"no {language} label"
    if len(entity.get("sitelinks", {})) < min_sitelinks:
        return None, "too few sitelinks"
    etype = next((type_map[c] for c in _p31(entity) if c in type_map), None)
    if etype is None:
        return None, "P31 not in type map"
    aliases = [a["value"] for a in entity.get("aliases", {}).get(language, []) if a.get("value")]
    desc = entity.get("descriptions", {}).get(language, {}).get("value", "")
    return {"entity_id": entity["id"], "name": label, "aliases": aliases, "description": desc,
            "type": etype, "popularity": len(entity.get("sitelinks", {}))}, ""


def import_wikidata(dump: Path, out: Path, type_map: dict[str, str] | None = None,
                    language: str = "en", min_sitelinks: int = 1, batch: int = 50_000
                    ) -> ImportStats:
    """Write the KB parquet atomically; returns counts of kept and skipped entities."""
    type_map = type_map or DEFAULT_TYPE_MAP
    stats = ImportStats()
    rows: list[dict] = []
    with open_dump(dump) as fh, atomic_path(out) as tmp, \
            pq.ParquetWriter(tmp, tables.KB) as writer:
        for entity in iter_entities(fh, stats):
            row, reason = to_kb_row(entity, type_map, language, min_sitelinks)
            if row is None:
                stats.skipped[reason] += 1
                continue
            rows.append(row)
            stats.kept += 1
            if len(rows) >= batch:
                writer.write_table(pa.Table.from_pylist(rows, schema=tables.KB))
                rows = []
        if rows or stats.kept == 0:
            writer.write_table(pa.Table.from_pylist(rows, schema=tables.KB))
    return stats
