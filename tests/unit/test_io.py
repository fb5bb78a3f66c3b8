import tarfile

import pyarrow as pa
import pytest

from mofi_core.io import tables
from mofi_core.io.atomic import atomic_dir, atomic_path, write_json
from mofi_core.io.shards import ShardWriter, iter_samples, split_member_name


def test_atomic_path_publishes_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "old.txt").write_text("1")
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("2")
        raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_shards_round_trip_and_are_byte_deterministic(tmp_path):
    for name in ("a.tar", "b.tar"):
        with ShardWriter(tmp_path / name) as w:
            w.write("k1", {"jpg": b"\xff\xd8", "txt": "héllo", "json": {"x": 1}})
            w.write("k2", {"jpg": b"\x00", "txt": ""})
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    samples = list(iter_samples(tmp_path / "a.tar"))
    assert [s["__key__"] for s in samples] == ["k1", "k2"]
    assert samples[0]["txt"] == "héllo".encode()
    assert samples[0]["json"] == b'{"x": 1}'


def test_shard_writer_rejects_unsafe_keys(tmp_path):
    with pytest.raises(ValueError, match="must not contain"), ShardWriter(tmp_path / "s.tar") as w:
        w.write("../evil", {"txt": "x"})
    assert not (tmp_path / "s.tar").exists()


def test_member_names_split_like_webdataset():
    assert split_member_name("dir/abc.seg.JPG") == ("dir/abc", "seg.jpg")
    assert split_member_name("noext") is None
    assert split_member_name("dir/.hidden") is None


def test_iter_samples_skips_non_file_members(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("adir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    assert list(iter_samples(path)) == []


def test_tables_check_schema_where_read(tmp_path):
    path = tmp_path / "t.parquet"
    tables.write_table(path, pa.table({"key": ["a"], "entity_id": ["Q1"],
                                       "score": pa.array([0.5], pa.float64())}), tables.SCORES)
    assert tables.read_table(path, tables.SCORES).schema.field("score").type == pa.float32()
    with pytest.raises(tables.SchemaError, match="missing columns"):
        tables.read_table(path, tables.MENTIONS)
    with pytest.raises(FileNotFoundError, match="run the stage"):
        tables.read_table(tmp_path / "nope.parquet", tables.SCORES)


def test_shard_writer_writes_the_bytes_tarfile_writes(tmp_path):
    """The hand-built headers equal tarfile's PAX output, so shards (and DVC hashes) do not
    depend on which writer made them; long and non-ASCII names take tarfile's pax path."""
    import io as _io
    import json as _json
    import random
    import tarfile

    from mofi_core.io.shards import ShardWriter, iter_samples

    rng = random.Random(0)
    samples = [(f"{i:09d}", {"jpg": rng.randbytes(rng.randint(0, 2000)),
                             "txt": b"x" * rng.randint(0, 600), "json": {"a": i}})
               for i in range(40)]
    samples += [("k" * 120, {"jpg": b"abc"}), ("caf\u00e9", {"txt": "t\u00e9"}),
                ("empty", {"txt": b""})]
    with tarfile.open(tmp_path / "ref.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in samples:
            for ext, value in members.items():
                data = value if isinstance(value, bytes) else (
                    value.encode() if isinstance(value, str) else
                    _json.dumps(value, sort_keys=True).encode())
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, _io.BytesIO(data))
    with ShardWriter(tmp_path / "fast.tar") as writer:
        for key, members in samples:
            writer.write(key, members)
    assert (tmp_path / "fast.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()
    got = {s["__key__"]: s for s in iter_samples(tmp_path / "fast.tar")}
    assert got["k" * 120]["jpg"] == b"abc" and got["caf\u00e9"]["txt"] == "t\u00e9".encode()
