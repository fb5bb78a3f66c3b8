"""The KB as the kb stage writes it and every later process opens it: memory-mapped, hash
indexes checked against their strings, an index from another KB refused."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mofi_core.io import tables
from mofi_core.kb.store import KBEntity, KBError, KnowledgeBase, hash64, normalise_alias

ENTITIES = [KBEntity("Q3", "Anna Rossta", ("Rossta",), "painter", "person", 12),
            KBEntity("Q1", "Kelvara Tower", ("Kelvara",), "a tower", "landmark", 3),
            KBEntity("Q2", "Kelvara Motors", ("Kelvara",), "a carmaker", "organization", 40)]


def _many(n: int, homonyms: int) -> list[KBEntity]:
    """``n`` entities; the first ``homonyms`` after the first are all called "Paris"."""
    out = [KBEntity(f"Q{i}", f"Thing {i}", (f"T{i}",), "", "place", i % 7) for i in range(n)]
    out[1:homonyms + 1] = [KBEntity(f"Q{i}", "Paris", (), "", "person", 1)
                           for i in range(1, homonyms + 1)]
    return out


def test_lookups_by_id_and_by_surface_form(tmp_path):
    kb = KnowledgeBase(ENTITIES)
    assert kb.ids() == ["Q1", "Q2", "Q3"]  # sorted by id whatever the input order
    assert kb.get("Q3") == ENTITIES[0] and kb.get("Q9") is None
    assert "Q2" in kb and "Q9" not in kb and 7 not in kb
    assert kb.candidates("KELVARA") == ("Q1", "Q2") and kb.candidates("nobody") == ()
    assert kb.candidates("Mt. Kelvara tower") == ()
    assert kb.candidates(" kelvara   TOWER!") == ("Q1",)
    assert sorted(kb.candidates_per_form().tolist()) == [1, 1, 1, 1, 2]
    assert kb.column("popularity", kb.rows(["Q2", "Q3"])) == [40, 12]


def test_written_then_opened_the_kb_is_memory_mapped_and_answers_the_same(tmp_path):
    made = KnowledgeBase(_many(5000, 300))
    meta = made.write(tmp_path, "sha256:abc")
    assert meta["entities"] == 5000 and meta["digest"] == "sha256:abc"
    kb = KnowledgeBase.open(tmp_path)
    assert isinstance(kb._form_hash, np.memmap) and isinstance(kb._id_row, np.memmap)
    assert len(kb) == 5000 and kb.get("Q4321") == made.get("Q4321")
    assert kb.candidates("paris") == made.candidates("paris")
    assert len(kb.candidates("paris")) == 300
    assert kb.candidates("t4017") == ("Q4017",) and kb.candidates("t17") == ()  # Q17: a Paris
    assert json.loads((tmp_path / "index" / "meta.json").read_text())["surface_forms"] == \
        made.candidates_per_form().size


def test_an_index_from_another_kb_is_refused(tmp_path):
    KnowledgeBase(ENTITIES).write(tmp_path / "a", "sha256:aaa")
    KnowledgeBase(ENTITIES[:2]).write(tmp_path / "b", "sha256:bbb")
    (tmp_path / "a" / "kb.arrow").replace(tmp_path / "b" / "kb.arrow")  # a's table, b's index
    with pytest.raises(KBError, match="built from another KB") as err:
        KnowledgeBase.open(tmp_path / "b")
    assert str(tmp_path / "b" / "index") in str(err.value)
    with pytest.raises(FileNotFoundError, match="run the kb stage first"):
        KnowledgeBase.open(tmp_path / "nothing")


@pytest.mark.parametrize("part, damage", [
    ("kb.arrow", lambda p: p.write_text("not arrow")),
    ("index/meta.json", lambda p: p.write_text("{nope")),
    ("index/form_hash.npy", lambda p: p.write_bytes(p.read_bytes()[:40])),
    ("index/form_text.arrow", lambda p: p.unlink()),
])
def test_a_damaged_part_of_the_folder_is_one_line_naming_it(tmp_path, part, damage):
    KnowledgeBase(ENTITIES).write(tmp_path, "sha256:aaa")
    damage(tmp_path / part)
    with pytest.raises(KBError, match="rebuild the folder: dvc repro -f kb") as err:
        KnowledgeBase.open(tmp_path)
    assert str(tmp_path / part) in str(err.value) and "\n" not in str(err.value)


def test_a_hash_collision_never_joins_two_forms(monkeypatch):
    """Every form hashes alike: the lookups still return only what each string names."""
    from mofi_core.kb import store

    monkeypatch.setattr(store, "hash64", lambda text: 7)
    kb = KnowledgeBase(ENTITIES)
    assert kb.candidates("kelvara") == ("Q1", "Q2")
    assert kb.candidates("anna rossta") == ("Q3",) and kb.candidates("nothing") == ()
    assert kb.get("Q2").name == "Kelvara Motors"


def test_popularity_is_optional_in_a_users_file_and_integers_of_any_width(tmp_path):
    rows = [{k: v for k, v in e.row().items() if k != "popularity"} for e in ENTITIES]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    assert KnowledgeBase.load(tmp_path / "a.parquet").get("Q2").popularity == 0
    wide = pa.Table.from_pylist([{**r, "popularity": 5} for r in rows])
    pq.write_table(wide, tmp_path / "b.parquet")  # int64
    assert KnowledgeBase.load(tmp_path / "b.parquet").get("Q1").popularity == 5
    pq.write_table(pa.Table.from_pylist([{**r, "popularity": "many"} for r in rows]),
                   tmp_path / "c.parquet")
    with pytest.raises(tables.SchemaError, match=r"c\.parquet: column 'popularity'"):
        KnowledgeBase.load(tmp_path / "c.parquet")
    path = tmp_path / "kb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert KnowledgeBase.load(path).get("Q3").popularity == 0


def test_read_takes_a_kb_folder_or_a_file(tmp_path):
    KnowledgeBase(ENTITIES).write(tmp_path / "kb", "sha256:x")
    tables.write_table(tmp_path / "kb.parquet", KnowledgeBase(ENTITIES).table, tables.KB)
    for path in (tmp_path / "kb", tmp_path / "kb.parquet"):
        assert KnowledgeBase.read(path).candidates("rossta") == ("Q3",)


def test_hashes_are_stable_across_processes_and_machines():
    """A keyed, documented hash (never Python's salted ``hash``): an index written on one
    machine is read on another."""
    import hashlib
    import subprocess
    import sys

    want = int.from_bytes(hashlib.blake2b("pàris".encode(), digest_size=8).digest(), "little")
    assert hash64("pàris") == want
    other = subprocess.run([sys.executable, "-c", "from mofi_core.kb.store import hash64; "
                            "print(hash64('pàris'))"], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin"})
    assert int(other.stdout) == want
    assert normalise_alias("Mt. Fúji") == "mt fuji"
