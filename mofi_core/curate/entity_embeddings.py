"""The entity text embeddings of one (KB, scorer): computed once, stored in the score stage's
output, memory-mapped by every process that scores.

``data/score/entities/`` holds

- ``embeddings.npy``: one float32 unit vector per entity (row ``i`` for ``entity_id`` ``i``),
- ``entities.arrow``: the entity ids, sorted (one string column),
- ``meta.json``: what the vectors were made from: the KB's digest, the scorer's identity (its
  weights' hash, or the open_clip name and checkpoint), the prompts, the width.

The score stage keeps the rows a previous run made with the same KB, scorer and prompts and
embeds only the entities it has not seen (equal to what a fresh run computes up to float
rounding: the text tower batches texts by length); a change to any of the three, or an
unreadable folder, embeds everything again (a cache never answers for another model). A
worker on a cluster opens the folder the main process wrote and refuses, in one line, one made
from another KB or scorer. Memory holds the rows a run needs (its candidates and the decoy
pool), never the whole KB.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from mofi_core.io.atomic import atomic_dir

FOLDER = "entities"
VECTORS = "embeddings.npy"
IDS = "entities.arrow"
META = "meta.json"
FORMAT = "mofi-entity-embeddings/1"

# Embed: entity ids -> float32 array (len(ids), width) of unit vectors
Embed = Callable[[list[str]], np.ndarray]


class EmbeddingCacheError(ValueError):
    """An embedding folder that cannot be used by this run; the message names it and what
    to do."""


def identity(kb: str, scorer: str, prompts: Sequence[str], homonym_prompts: Sequence[str]
             ) -> dict:
    """What the vectors depend on: equal identities give equal vectors."""
    return {"format": FORMAT, "kb": kb, "scorer": scorer, "prompts": list(prompts),
            "homonym_prompts": list(homonym_prompts)}


@dataclass(frozen=True)
class Update:
    """What :func:`update` did: rows embedded now, rows kept from before, and why the old
    folder was not used (empty when it was, or when there was none)."""

    embedded: int
    reused: int
    discarded: str = ""


def _read_meta(folder: Path) -> dict | None:
    path = folder / META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise EmbeddingCacheError(f"{path}: not JSON ({err}); delete {folder} and re-run "
                                  "the score stage") from err


def _differs(have: dict, want: dict) -> str:
    """The first field in which the folder's identity differs from the run's ('' if none)."""
    for key in ("format", "kb", "scorer", "prompts", "homonym_prompts"):
        if have.get(key) != want.get(key):
            return f"{key} {have.get(key)!r}, this run's {want.get(key)!r}"
    return ""


def _ids(folder: Path) -> pa.Array:
    return ipc.open_file(pa.memory_map(str(folder / IDS))).read_all()["entity_id"] \
        .combine_chunks()


def update(folder: Path, ident: dict, entity_ids: Sequence[str], embed: Embed) -> Update:
    """Make ``folder`` hold the vectors of exactly ``entity_ids`` (sorted, unique) for
    ``ident``: rows of a previous folder with the same identity are kept, the others embedded
    by ``embed``. The folder is replaced as a whole (a killed run leaves the old one)."""
    ids = sorted(set(entity_ids))
    try:
        have = _read_meta(folder)
    except EmbeddingCacheError:
        have, discarded = None, f"unreadable ({META} is not JSON)"
    else:
        discarded = "" if have is None else _differs(have, ident)
    old: dict[str, int] = {}
    old_vectors = None
    if have is not None and not discarded:
        try:
            old_ids = _ids(folder).to_pylist()
            old_vectors = np.load(folder / VECTORS, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, pa.ArrowException) as err:
            discarded = f"unreadable ({type(err).__name__})"
        else:
            old = {e: i for i, e in enumerate(old_ids)}
    new = [e for e in ids if e not in old]
    fresh = embed(new) if new else None
    width = fresh.shape[1] if fresh is not None else \
        (old_vectors.shape[1] if old_vectors is not None else 0)
    out = np.zeros((len(ids), width), dtype=np.float32)
    if ids:
        pos = {e: i for i, e in enumerate(ids)}
        kept = [e for e in ids if e in old]
        if kept:
            out[[pos[e] for e in kept]] = old_vectors[[old[e] for e in kept]]
        if new:
            out[[pos[e] for e in new]] = fresh
    with atomic_dir(folder) as tmp:
        np.save(tmp / VECTORS, out, allow_pickle=False)
        table = pa.table({"entity_id": pa.array(ids, pa.string())})
        with pa.OSFile(str(tmp / IDS), "wb") as sink, ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        (tmp / META).write_text(json.dumps({**ident, "entities": len(ids), "width": width},
                                           indent=1) + "\n", encoding="utf-8")
    return Update(embedded=len(new), reused=len(ids) - len(new), discarded=discarded)


def load(folder: Path, ident: dict, entity_ids: Sequence[str]) -> np.ndarray:
    """The rows of ``entity_ids`` (in that order) from the folder :func:`update` wrote; refuses
    a folder made from another KB, scorer or prompts, or one missing an entity."""
    have = _read_meta(folder)
    if have is None:
        raise EmbeddingCacheError(f"no entity embeddings in {folder} ({META}): the score "
                                  "stage's main process writes them before any worker scores")
    why = _differs(have, ident)
    if why:
        raise EmbeddingCacheError(f"{folder} holds the entity embeddings of another run "
                                  f"({why}); re-run the score stage so that it embeds them "
                                  "again: dvc repro -f score")
    try:
        index = {e: i for i, e in enumerate(_ids(folder).to_pylist())}
        vectors = np.load(folder / VECTORS, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise EmbeddingCacheError(f"{folder}: not readable ({type(err).__name__}: {err}); "
                                  "re-run the score stage: dvc repro -f score") from err
    if vectors.shape[0] != len(index):
        raise EmbeddingCacheError(f"{folder / VECTORS} has {vectors.shape[0]} rows for "
                                  f"{len(index)} entity ids; re-run the score stage: "
                                  "dvc repro -f score")
    missing = [e for e in entity_ids if e not in index]
    if missing:
        raise EmbeddingCacheError(f"{folder} has no embedding for {len(missing)} entities "
                                  f"(e.g. {missing[:3]}); re-run the score stage: "
                                  "dvc repro -f score")
    rows = [index[e] for e in entity_ids]
    return np.asarray(vectors[rows], dtype=np.float32) if rows else \
        np.zeros((0, vectors.shape[1]), dtype=np.float32)
