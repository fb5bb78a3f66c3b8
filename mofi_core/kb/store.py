"""Knowledge base: one row per entity (entity_id, name, aliases, description, type).

The alias index maps a normalised surface form to every entity it may name; a form shared by
several entities yields several candidates, which later stages disambiguate.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from mofi_core.io import tables

_PUNCT = re.compile(r"[^\w\s]")


def normalise_alias(text: str) -> str:
    """Casefold, strip accents and punctuation, collapse spaces: 'Mt. Fúji' -> 'mt fuji'."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(_PUNCT.sub(" ", text.casefold()).split())


@dataclass(frozen=True)
class KBEntity:
    entity_id: str
    name: str
    aliases: tuple[str, ...]
    description: str
    type: str


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"knowledge base {path} not found")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON object ({err.msg})") from None
            missing = [f for f in tables.KB.names if f not in row]
            if not isinstance(row, dict) or missing:
                raise ValueError(f"{path}:{n}: entity needs fields {tables.KB.names} "
                                 f"(missing {missing})")
            rows.append(row)
    return rows


class KnowledgeBase:
    def __init__(self, entities: list[KBEntity]) -> None:
        self.entities = {e.entity_id: e for e in entities}
        if len(self.entities) != len(entities):
            raise ValueError("knowledge base has duplicate entity_id values")
        index: dict[str, set[str]] = defaultdict(set)
        for e in entities:
            for form in (e.name, *e.aliases):
                norm = normalise_alias(form)
                if norm:
                    index[norm].add(e.entity_id)
        self.alias_index = {k: tuple(sorted(v)) for k, v in index.items()}

    @classmethod
    def load(cls, path: Path | str) -> KnowledgeBase:
        """From parquet (schema ``tables.KB``) or JSON Lines (one entity object per line)."""
        path = Path(path)
        rows = _read_jsonl(path) if path.suffix in (".jsonl", ".ndjson") else \
            tables.read_table(path, tables.KB).to_pylist()
        if not rows:
            raise ValueError(f"knowledge base {path} holds no entities: point it at a KB with "
                             "the entities the alt-texts name")
        for column in ("entity_id", "name"):
            bad = [i for i, r in enumerate(rows) if not r[column]]
            if bad:
                raise ValueError(f"{path}: column {column!r} is empty or null in {len(bad)} rows "
                                 f"(first: row {bad[0]}); every entity needs an id and a name")
        counts = Counter(r["entity_id"] for r in rows)
        dupes = sorted(e for e, n in counts.items() if n > 1)
        if dupes:
            raise ValueError(f"{path}: column 'entity_id' repeats {len(dupes)} ids (first: "
                             f"{dupes[0]!r}, {counts[dupes[0]]} rows); each entity once")
        return cls([KBEntity(r["entity_id"], r["name"], tuple(r["aliases"] or ()),
                             r["description"] or "", r["type"] or "") for r in rows])

    def candidates(self, mention: str) -> tuple[str, ...]:
        return self.alias_index.get(normalise_alias(mention), ())

    def surface_forms(self) -> list[str]:
        """Every name and alias as written in the KB, for the gazetteer."""
        forms = {f for e in self.entities.values() for f in (e.name, *e.aliases) if f.strip()}
        return sorted(forms)

    def __len__(self) -> int:
        return len(self.entities)
