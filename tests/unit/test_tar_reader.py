"""iter_samples parses plain ustar headers itself: it must read what tarfile reads, fail where
tarfile fails, and hand everything unusual to tarfile."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from mofi_core.io.shards import ShardWriter, iter_samples, split_member_name


def tarfile_samples(path: Path) -> tuple[list[dict], type | None]:
    """The reference: the same grouping done on ``tarfile``'s members, with the end check."""
    out: list[dict] = []
    current = None
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                parts = split_member_name(m.name)
                if parts is None:
                    continue
                if current is not None and current["__key__"] != parts[0]:
                    out.append(current)
                    current = None
                current = current or {"__key__": parts[0]}
                if not m.isfile():
                    current.setdefault("__errors__", []).append(m.name)
                    continue
                current[parts[1]] = tar.extractfile(m).read()
            if current is not None:
                out.append(current)
                current = None
            if isinstance(tar.fileobj, io.BufferedReader):
                tar.fileobj.seek(tar.offset)
                tail = tar.fileobj.read()
                if len(tail) < tarfile.BLOCKSIZE or tail.strip(b"\0"):
                    raise tarfile.ReadError("truncated")
    except (tarfile.TarError, OSError, EOFError) as err:
        return out, type(err)  # a sample cut by the error is not returned
    return out, None


def ours(path: Path) -> tuple[list[dict], type | None]:
    out: list[dict] = []
    try:
        for s in iter_samples(path):
            if "__errors__" in s:
                s["__errors__"] = [e.split("'")[1] for e in s["__errors__"]]
            out.append(s)
    except (tarfile.TarError, OSError, EOFError) as err:
        return out, type(err)
    return out, None


def assert_same(path: Path) -> None:
    want, want_err = tarfile_samples(path)
    got, got_err = ours(path)
    assert got == want, path.name
    assert (got_err is None) == (want_err is None), (path.name, got_err, want_err)
    if want_err is not None:
        assert issubclass(got_err, tarfile.TarError | OSError | EOFError)


def write_tar(path: Path, members: list[tuple[str, bytes | str]], fmt=tarfile.PAX_FORMAT
              ) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif data == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "a.jpg"
                tar.addfile(info)
            else:
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
    return path


MEMBERS = [("a.jpg", b"\xff\xd8" + b"x" * 700), ("a.txt", "caf\u00e9".encode()),
           ("b.jpg", b"y" * 512), ("b.json", b"{}"), ("c.txt", b"")]


def test_shard_writer_shards_are_read_like_tarfile(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "w.tar") as w:
        for i in range(30):
            w.write(f"{i:05d}", {"jpg": bytes([i]) * (i * 37), "txt": f"t{i}", "json": {"i": i}})
    assert_same(tmp_path / "w.tar")
    assert len(ours(tmp_path / "w.tar")[0]) == 30


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_formats_and_unusual_members_are_read_like_tarfile(tmp_path: Path, fmt) -> None:
    long = "d/" + "n" * 120 + ".jpg"  # pax / GNU long name, or a ustar prefix
    members = [*MEMBERS[:2], ("dir", "dir"), ("x.lnk", "link"), ("noext", b"1"),
               ("pre/fix/k.txt", b"p"), *MEMBERS[2:],
               ("p" * 60 + "/" + "q" * 60 + ".jpg", b"ustar prefix field")]
    if fmt != tarfile.USTAR_FORMAT:
        members += [(long, b"long"), ("\u00fcml\u00e4ut.txt", b"u")]
    assert_same(write_tar(tmp_path / "f.tar", members, fmt))


def test_every_truncation_point_fails_like_tarfile_after_the_same_samples(tmp_path: Path
                                                                         ) -> None:
    whole = write_tar(tmp_path / "whole.tar", MEMBERS).read_bytes()
    cut = tmp_path / "cut.tar"
    for n in [*range(0, 4096, 61), len(whole) - 1, len(whole)]:
        cut.write_bytes(whole[:n])
        assert_same(cut)


def test_damaged_headers_and_garbage_after_the_end(tmp_path: Path) -> None:
    whole = bytearray(write_tar(tmp_path / "w.tar", MEMBERS).read_bytes())
    second = 512 + 1024  # a.jpg's header and 700 bytes of data padded to two blocks
    assert whole[second:second + 5] == b"a.txt"
    cases = {
        "checksum": (second + 148, b"0000000\0"),
        "size": (second + 124, b"12345678z01\0"),
        "mtime": (second + 136, b"zzzzzzzzzzz\0"),
        "base256_size": (second + 124, b"\x80" + bytes(10) + b"\x05"),
        "typeflag": (second + 156, b"Z"),
        "negative_size": (second + 124, b"-0000000001\0"),
    }
    for name, (at, patch) in cases.items():
        bad = bytearray(whole)
        bad[at:at + len(patch)] = patch
        if name != "checksum":  # a valid checksum: the damaged field itself must be caught
            header = bad[second:second + 512]
            header[148:156] = b" " * 8
            bad[second + 148:second + 156] = b"%06o\0 " % sum(header)
        (tmp_path / f"{name}.tar").write_bytes(bytes(bad))
        assert_same(tmp_path / f"{name}.tar")
    (tmp_path / "garbage.tar").write_bytes(bytes(whole) + b"trailing junk")
    assert_same(tmp_path / "garbage.tar")
    assert ours(tmp_path / "garbage.tar")[1] is tarfile.ReadError


def test_empty_archives_and_empty_files(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "none.tar"):
        pass
    assert_same(tmp_path / "none.tar")
    assert ours(tmp_path / "none.tar") == ([], None)
    (tmp_path / "empty.tar").write_bytes(b"")
    assert_same(tmp_path / "empty.tar")
    assert ours(tmp_path / "empty.tar")[1] is not None


def test_compressed_shards_go_to_tarfile(tmp_path: Path) -> None:
    raw = write_tar(tmp_path / "p.tar", MEMBERS).read_bytes()
    (tmp_path / "p.tar.gz").write_bytes(gzip.compress(raw))
    assert_same(tmp_path / "p.tar.gz")
    assert ours(tmp_path / "p.tar.gz") == ours(tmp_path / "p.tar")
