"""The knowledge base: one row per entity, built once by the ``kb`` stage, opened by the others.

Columns (``tables.KB``): ``entity_id``, ``name``, ``aliases``, ``description``, ``type`` and
``popularity`` (Wikidata sitelinks; 0 where the source has none).

At the paper's scale (2 million entities) the KB must not be rebuilt, nor copied, in every
process that reads it. The ``kb`` stage therefore writes, once, beside ``kb.parquet`` (the
table as a user reads it):

- ``kb.arrow``: the rows sorted by ``entity_id``, Arrow IPC without compression, which
  :meth:`KnowledgeBase.open` memory-maps: a column is read from the page cache, shared by every
  process on the machine, never parsed into Python objects;
- ``index/*.npy`` (numpy arrays, read with ``mmap_mode`` and ``allow_pickle=False``):
  the 64-bit hash of every ``entity_id`` (sorted, with its row), of every normalised surface form
  (name and aliases; sorted, with the rows it names, CSR) and of every surface form's token key
  (the gazetteer's phrases, see :mod:`mofi_core.kb.phrases`);
- ``index/meta.json``: the format, the table's digest (which ``kb.arrow`` carries too, so an
  index built from another KB is refused), the counts, and the tokenizer the phrases were made
  with.

A lookup is a hash and a binary search: its cost does not grow with the KB (only as its
logarithm), and a process's memory grows with the pages it touches, not with the KB or the
number of workers. A hash match is always checked against the string it stands for.

Small KBs (tests, a class list) are built in memory by :class:`KnowledgeBase` itself, with the
same arrays.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from mofi_core.io import tables

_PUNCT = re.compile(r"[^\w\s]")
FORMAT = 1
TABLE = "kb.arrow"
INDEX = "index"
META = "meta.json"
DIGEST_KEY = b"mofi.kb.digest"  # schema metadata of kb.arrow: the table's digest


def normalise_alias(text: str) -> str:
    """Casefold, strip accents and punctuation, collapse spaces: 'Mt. Fúji' -> 'mt fuji'."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(_PUNCT.sub(" ", text.casefold()).split())


def hash64(text: str) -> int:
    """A stable 64-bit hash of a string (BLAKE2b): the same on every machine and process."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(),
                          "little")


def hashes(texts: Iterable[str]) -> np.ndarray:
    return np.fromiter((hash64(t) for t in texts), dtype=np.uint64)


@dataclass(frozen=True)
class KBEntity:
    entity_id: str
    name: str
    aliases: tuple[str, ...]
    description: str
    type: str
    popularity: int = 0

    def row(self) -> dict:
        return {"entity_id": self.entity_id, "name": self.name, "aliases": list(self.aliases),
                "description": self.description, "type": self.type,
                "popularity": self.popularity}


class KBError(ValueError):
    """A KB file or index that cannot be used; the message names it and what to do."""


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
                raise KBError(f"{path}:{n}: not a JSON object ({err.msg})") from None
            missing = [f for f in tables.KB_REQUIRED if not isinstance(row, dict) or f not in row]
            if missing:
                raise KBError(f"{path}:{n}: entity needs fields {list(tables.KB_REQUIRED)} "
                              f"(missing {missing})")
            rows.append(row)
    return rows


def check_table(table: pa.Table, source: str) -> pa.Table:
    """The KB's own checks, naming ``source``: ids and names present, each id once."""
    if table.num_rows == 0:
        raise KBError(f"knowledge base {source} holds no entities: point it at a KB with the "
                      "entities the alt-texts name")
    for column in ("entity_id", "name"):
        col = table[column]
        empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True)  # null counts
        bad = pc.sum(empty).as_py() or 0
        if bad:
            first = pc.index(empty, True).as_py()
            raise KBError(f"{source}: column {column!r} is empty or null in {bad} rows "
                          f"(first: row {first}); every entity needs an id and a name")
    counts = pc.value_counts(table["entity_id"])
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        first = dup[0].as_py()
        raise KBError(f"{source}: column 'entity_id' repeats {len(dup)} ids (first: "
                      f"{first['values']!r}, {first['counts']} rows); each entity once")
    return table


class KnowledgeBase:
    """Entities by id, candidates by surface form, gazetteer phrases; see the module doc."""

    def __init__(self, entities: Iterable[KBEntity] | pa.Table) -> None:
        table = entities if isinstance(entities, pa.Table) else \
            tables.from_rows([e.row() for e in entities], tables.KB)
        table = check_table(table, "the knowledge base")
        self._set(table.sort_by("entity_id"), **_index_arrays(table.sort_by("entity_id")))

    def _set(self, table: pa.Table, id_hash: np.ndarray, id_row: np.ndarray,
             form_hash: np.ndarray, form_text: pa.Array, form_ptr: np.ndarray,
             form_rows: np.ndarray, phrases: Phrases | None = None,
             meta: dict | None = None) -> None:
        self.table = table
        # one chunk per column (kb.arrow is one record batch): taking rows is then one call on
        # an array, without copying the memory-mapped buffers
        self._cols = {name: _one_chunk(table[name]) for name in table.column_names}
        self._ids = self._cols["entity_id"]
        self._id_hash, self._id_row = id_hash, id_row
        self._form_hash, self._form_text = form_hash, form_text
        self._form_ptr, self._form_rows = form_ptr, form_rows
        self.phrases = phrases
        self.meta = meta or {}

    # -- building and opening ------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> KnowledgeBase:
        """From a KB file: parquet (``tables.KB``) or JSON Lines (one entity object a line);
        ``popularity`` may be left out (0)."""
        path = Path(path)
        if path.suffix in (".jsonl", ".ndjson"):
            rows = _read_jsonl(path)
            table = tables.from_rows([{**r, "popularity": r.get("popularity") or 0}
                                      for r in rows], tables.KB)
        else:
            table = tables.read_kb(path)
        return cls(check_table(table, str(path)))

    @classmethod
    def open(cls, folder: Path | str) -> KnowledgeBase:
        """The KB the ``kb`` stage wrote in ``folder``, memory-mapped (nothing is copied)."""
        folder = Path(folder)
        meta_path = folder / INDEX / META
        if not (folder / TABLE).is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"no knowledge base in {folder} ({TABLE}, {INDEX}/{META}); "
                                    "run the kb stage first (dvc repro kb)")
        reading = meta_path
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            reading = folder / TABLE
            table = ipc.open_file(pa.memory_map(str(reading))).read_all()
            digest = (table.schema.metadata or {}).get(DIGEST_KEY, b"").decode()
            if meta.get("format") != FORMAT or digest != meta.get("digest"):
                raise KBError(f"{folder / INDEX} was built from another KB than "
                              f"{folder / TABLE} (digest {meta.get('digest')!r} vs {digest!r}, "
                              f"format {meta.get('format')!r}); rebuild both: dvc repro -f kb")
            index = folder / INDEX

            def arr(name: str) -> np.ndarray:
                nonlocal reading
                reading = index / f"{name}.npy"
                return np.load(reading, mmap_mode="r", allow_pickle=False)

            def strings(name: str) -> pa.Array:
                nonlocal reading
                reading = index / name
                return _strings(reading)

            kb = cls.__new__(cls)
            phrases = Phrases(arr("phrase_hash"), strings("phrase_text.arrow"),
                              int(meta["max_phrase_tokens"]), meta["tokenizer"]) \
                if meta.get("phrases") else None
            kb._set(table, arr("id_hash"), arr("id_row"), arr("form_hash"),
                    strings("form_text.arrow"), arr("form_ptr"), arr("form_rows"),
                    phrases, meta)
        except KBError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError, pa.ArrowException
                ) as err:  # a truncated, overwritten or missing file of the folder
            raise KBError(f"{reading}: not a readable part of the knowledge base in {folder} "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                          "); rebuild the folder: dvc repro -f kb") from err
        return kb

    @classmethod
    def read(cls, path: Path | str) -> KnowledgeBase:
        """The KB at ``path``: a folder the kb stage wrote (memory-mapped), or a KB file
        (parquet or JSON Lines, built in memory)."""
        return cls.open(path) if Path(path).is_dir() else cls.load(path)

    def write(self, folder: Path, digest: str, phrases: Phrases | None = None) -> dict:
        """``kb.arrow`` and ``index/`` into ``folder`` (the kb stage's output); returns the
        meta it wrote."""
        index = folder / INDEX
        index.mkdir(parents=True, exist_ok=True)
        _write_ipc(folder / TABLE,
                   self.table.replace_schema_metadata({DIGEST_KEY: digest.encode()}))
        arrays = {"id_hash": self._id_hash, "id_row": self._id_row,
                  "form_hash": self._form_hash, "form_ptr": self._form_ptr,
                  "form_rows": self._form_rows}
        _write_ipc(index / "form_text.arrow", pa.table({"text": self._form_text}))
        if phrases is not None:
            arrays["phrase_hash"] = phrases.hash
            _write_ipc(index / "phrase_text.arrow", pa.table({"text": phrases.text}))
        for name, a in arrays.items():
            np.save(index / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
        meta = {"format": FORMAT, "digest": digest, "entities": len(self),
                "surface_forms": len(self._form_hash),
                "phrases": 0 if phrases is None else len(phrases.hash),
                "max_phrase_tokens": 0 if phrases is None else phrases.max_tokens,
                "tokenizer": "" if phrases is None else phrases.tokenizer}
        (index / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return meta

    # -- lookups ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.table.num_rows

    def __contains__(self, entity_id: object) -> bool:
        return isinstance(entity_id, str) and self.row(entity_id) is not None

    def row(self, entity_id: str) -> int | None:
        """The row of ``entity_id`` in :attr:`table`, or None."""
        h = np.uint64(hash64(entity_id))
        i = int(np.searchsorted(self._id_hash, h))
        while i < len(self._id_hash) and self._id_hash[i] == h:
            r = int(self._id_row[i])
            if self._ids[r].as_py() == entity_id:
                return r
            i += 1
        return None

    def rows(self, entity_ids: Iterable[str]) -> np.ndarray:
        """The row of each id (-1 where it is not in the KB)."""
        got = [self.row(e) for e in entity_ids]
        return np.array([-1 if r is None else r for r in got], dtype=np.int64)

    def column(self, name: str, rows: np.ndarray) -> list:
        """The values of one column at ``rows`` (as Python objects)."""
        return self._cols[name].take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()

    def entity(self, row: int) -> KBEntity:
        c = self._cols
        return KBEntity(c["entity_id"][row].as_py(), c["name"][row].as_py(),
                        tuple(c["aliases"][row].as_py() or ()),
                        c["description"][row].as_py() or "", c["type"][row].as_py() or "",
                        int(c["popularity"][row].as_py() or 0))

    def get(self, entity_id: str) -> KBEntity | None:
        row = self.row(entity_id)
        return None if row is None else self.entity(row)

    def __iter__(self) -> Iterator[KBEntity]:
        """Every entity, in ``entity_id`` order (a small KB's convenience: it builds each one)."""
        return (self.entity(r) for r in range(len(self)))

    def ids(self) -> list[str]:
        """Every ``entity_id``, sorted."""
        return self._ids.to_pylist()

    def form_rows(self, form: str) -> np.ndarray:
        """The rows a normalised surface form names (ascending; empty when none)."""
        i = _find(self._form_hash, self._form_text, form)
        if i is None:
            return np.zeros(0, dtype=np.int32)
        return np.asarray(self._form_rows[self._form_ptr[i]:self._form_ptr[i + 1]])

    def candidates(self, mention: str) -> tuple[str, ...]:
        """The ids of every entity whose name or an alias normalises like ``mention``,
        sorted."""
        rows = self.form_rows(normalise_alias(mention))
        return tuple(self._ids[int(r)].as_py() for r in rows)

    def candidates_per_form(self) -> np.ndarray:
        """How many entities each surface form names (1: unambiguous)."""
        return np.diff(np.asarray(self._form_ptr))


def kb_digest(folder: Path | str) -> str:
    """The content identity of the KB the ``kb`` stage wrote in ``folder`` (its table's
    digest), read from the index's meta without opening anything else."""
    meta = Path(folder) / INDEX / META
    if not meta.is_file():
        raise FileNotFoundError(f"no knowledge base index in {folder} ({INDEX}/{META}); run "
                                "the kb stage first (dvc repro kb)")
    return str(json.loads(meta.read_text(encoding="utf-8"))["digest"])


@dataclass(frozen=True)
class Phrases:
    """The gazetteer: the token key of every surface form (see :mod:`mofi_core.kb.phrases`),
    hashed and sorted, with the keys themselves (a hash match is checked against its key)."""

    hash: np.ndarray
    text: pa.Array
    max_tokens: int
    tokenizer: str

    def hits(self, keys: list[str]) -> np.ndarray:
        """Which of ``keys`` are phrases (a boolean per key)."""
        if not keys or not len(self.hash):
            return np.zeros(len(keys), dtype=bool)
        h = hashes(keys)
        pos = np.minimum(np.searchsorted(self.hash, h), len(self.hash) - 1)
        found = np.asarray(self.hash)[pos] == h
        for k in np.flatnonzero(found):  # equal hashes: compare the keys
            found[k] = _find(self.hash, self.text, keys[k], int(pos[k])) is not None
        return found


def _find(sorted_hash: np.ndarray, texts: pa.Array, text: str, start: int | None = None
          ) -> int | None:
    """The position of ``text`` among ``texts`` (ordered by their sorted hashes), or None."""
    h = np.uint64(hash64(text))
    i = int(np.searchsorted(sorted_hash, h)) if start is None else start
    while i < len(sorted_hash) and sorted_hash[i] == h:
        if texts[i].as_py() == text:
            return i
        i += 1
    return None


def _strings(path: Path) -> pa.Array:
    """The one string column of an Arrow IPC file, memory-mapped."""
    return ipc.open_file(pa.memory_map(str(path))).read_all()["text"].combine_chunks()


def _write_ipc(path: Path, table: pa.Table) -> None:
    """One record batch: every column one contiguous buffer once memory-mapped."""
    table = table.combine_chunks()
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, table.num_rows))


def _one_chunk(col: pa.ChunkedArray) -> pa.Array:
    """The column as one array: its only chunk as it is (no copy), else the chunks joined."""
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def surface_forms(table: pa.Table) -> Iterator[tuple[int, str]]:
    """(row, form) for every name and alias of every row, as written in the KB."""
    names, aliases = table["name"].to_pylist(), table["aliases"].to_pylist()
    for row, (name, more) in enumerate(zip(names, aliases, strict=True)):
        for form in (name, *(more or ())):
            if form and form.strip():
                yield row, form


def _index_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """The id and surface-form indexes of a table sorted by ``entity_id``."""
    id_hash = hashes(table["entity_id"].to_pylist())
    order = np.argsort(id_hash, kind="stable")
    by_form: dict[str, set[int]] = {}
    for r, f in surface_forms(table):
        norm = normalise_alias(f)
        if norm:
            by_form.setdefault(norm, set()).add(r)
    forms = sorted(by_form)
    form_hash = hashes(forms)
    forder = np.argsort(form_hash, kind="stable")
    ptr = np.zeros(len(forms) + 1, dtype=np.int64)
    rows: list[int] = []
    for k, i in enumerate(forder):
        rows.extend(sorted(by_form[forms[i]]))
        ptr[k + 1] = len(rows)
    return {"id_hash": id_hash[order], "id_row": order.astype(np.int32),
            "form_hash": form_hash[forder],
            "form_text": pa.array([forms[i] for i in forder], pa.string()),
            "form_ptr": ptr, "form_rows": np.array(rows, dtype=np.int32)}
