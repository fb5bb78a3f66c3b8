"""Broken web data on purpose: shards with every fault ingest must survive.

``write_fault_shards`` writes four shards next to a corpus — one full of bad members among good
ones, one cut short mid-member, one that is not a tar at all, one empty — and returns the plan:
which keys must be kept and which must be rejected, with a fragment of the reason. Tests run the
pipeline over a corpus with these shards mixed in and check the counts exactly; nothing in the
pipeline reads this module.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image


@dataclass
class FaultPlan:
    kept: list[tuple[str, str]] = field(default_factory=list)  # (key, shard file name)
    rejected: dict[tuple[str, str], str] = field(default_factory=dict)  # -> reason fragment
    faults: list[str] = field(default_factory=list)  # what was tried, one line each

    def keep(self, key: str, shard: str, fault: str) -> None:
        self.kept.append((key, shard))
        self.faults.append(f"{fault} (kept)")

    def reject(self, key: str, shard: str, reason: str, fault: str) -> None:
        self.rejected[(key, shard)] = reason
        self.faults.append(fault)


def _image(mode: str, fmt: str, size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    colours = {"RGB": (40 + seed % 200, 90, 140), "RGBA": (200, 30, seed % 250, 120),
               "L": 30 + seed % 200, "CMYK": (10, 200, 30, seed % 90), "P": seed % 200,
               "I;16": 50_000 - seed, "LA": (90, 100)}
    img = Image.new(mode, size, colours[mode])
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG header claiming ``width`` x ``height`` pixels (a few hundred bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


class _Tar:
    """A tar written member by member, any member type and any name."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def file(self, name: str, data: bytes | str) -> None:
        data = data.encode("utf-8") if isinstance(data, str) else data
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def special(self, name: str, kind: bytes, target: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mtime = kind, target, 0
        self.tar.addfile(info)

    def sample(self, key: str, members: dict[str, bytes | str]) -> None:
        for ext, data in members.items():
            self.file(f"{key}.{ext}", data)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def write_fault_shards(folder: Path, captions: list[str], prefix: str = "00000") -> FaultPlan:
    """Write ``<prefix>-faults-{a,b,c,d}.tar`` into ``folder``; ``captions`` are alt-texts for
    the good samples (entity names make them useful downstream). Returns the plan."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = FaultPlan()
    cap = [captions[i % len(captions)] for i in range(16)]

    a_name = f"{prefix}-faults-a.tar"
    a = _Tar()
    goods = [("cmyk", _image("CMYK", "JPEG", seed=1), "CMYK JPEG"),
             ("palette", _image("P", "PNG", seed=2), "palette PNG"),
             ("alpha", _image("RGBA", "PNG", seed=3), "RGBA PNG with alpha"),
             ("graya", _image("LA", "PNG", seed=4), "grayscale+alpha PNG"),
             ("deep16", _image("I;16", "PNG", seed=5), "16-bit grayscale PNG"),
             ("gray", _image("L", "JPEG", seed=6), "grayscale JPEG"),
             ("webp", _image("RGB", "WEBP", seed=7), "WebP named .jpg")]
    for i, (key, data, fault) in enumerate(goods):
        a.sample(f"fa-{key}", {"jpg": data, "txt": cap[i], "json": '{"url": "http://x/y"}'})
        plan.keep(f"fa-{key}", a_name, fault)
    a.sample("fa-badutf8", {"jpg": _image("RGB", "JPEG", seed=8),
                            "txt": b"\xff\xfe " + cap[8].encode() + b" caf\xe9 \x00\x07\x1b[31m"})
    plan.keep("fa-badutf8", a_name, "invalid UTF-8 and control characters in alt-text")
    a.sample("fa-longtext", {"jpg": _image("RGB", "JPEG", seed=9), "txt": cap[9] + " x" * 3000})
    plan.keep("fa-longtext", a_name, "6 KB alt-text (truncated to ingest.max_text_chars)")
    a.sample("fa-dupkey", {"jpg": _image("RGB", "JPEG", seed=10), "txt": cap[10]})
    plan.keep("fa-dupkey", a_name, "first of two samples with the same key")

    bad = [("fa-notimage", {"jpg": b"<html><body>404 Not Found</body></html>", "txt": cap[0]},
            "undecodable image", "HTML bytes in .jpg"),
           ("fa-zero", {"jpg": b"", "txt": cap[0]}, "empty image", "zero-byte image"),
           ("fa-bomb", {"png": png_bomb(), "txt": cap[0]}, "DecompressionBomb",
            "decompression bomb (100000x100000 PNG header)"),
           ("fa-emptytext", {"jpg": _image("RGB", "JPEG", seed=11), "txt": b""},
            "empty alt-text", "empty alt-text"),
           ("fa-blanktext", {"jpg": _image("RGB", "JPEG", seed=12), "txt": b"\x00 \t\n"},
            "empty alt-text", "alt-text of control characters only"),
           ("fa-hugetext", {"jpg": _image("RGB", "JPEG", seed=13), "txt": b"a" * (10 * 2**20)},
            "max_text_bytes", "10 MB alt-text"),
           ("fa-notext", {"jpg": _image("RGB", "JPEG", seed=14)}, "no .txt", "missing .txt"),
           ("fa-noimage", {"txt": cap[1]}, "no image member", "missing .jpg"),
           ("fa-badjson", {"jpg": _image("RGB", "JPEG", seed=15), "txt": cap[2],
                           "json": "{'url': broken"}, "malformed .json", "malformed .json"),
           ("fa-listjson", {"jpg": _image("RGB", "JPEG", seed=16), "txt": cap[3],
                            "json": "[1, 2]"}, "not an object", ".json that is not an object"),
           ("../escape", {"jpg": _image("RGB", "JPEG", seed=17), "txt": cap[4]},
            "unsafe key", "path traversal member names (../escape.jpg)"),
           ("/var/mofi-absolute", {"jpg": _image("RGB", "JPEG", seed=18), "txt": cap[5]},
            "unsafe key", "absolute member names (/var/...)")]
    for key, members, reason, fault in bad:
        a.sample(key, members)
        plan.reject(key, a_name, reason, fault)
    a.special("fa-link.jpg", tarfile.SYMTYPE, "/etc/passwd")
    a.file("fa-link.txt", cap[6])
    plan.reject("fa-link", a_name, "a symlink", "symlink member")
    a.special("fa-hard.jpg", tarfile.LNKTYPE, "fa-gray.jpg")
    a.file("fa-hard.txt", cap[7])
    plan.reject("fa-hard", a_name, "a hard link", "hard-link member")
    a.special("fa-fifo.jpg", tarfile.FIFOTYPE)
    a.file("fa-fifo.txt", cap[8])
    plan.reject("fa-fifo", a_name, "a FIFO", "FIFO member")
    a.special("fa-dir", tarfile.DIRTYPE)
    plan.reject("fa-dir", a_name, "key.extension", "directory member")
    a.file("README", "not a sample")
    plan.reject("README", a_name, "key.extension", "member without an extension")
    a.sample("fa-dupkey", {"jpg": _image("RGB", "JPEG", seed=19), "txt": cap[11]})
    plan.faults.append("second sample with a key already used in the shard")
    plan.rejected[("fa-dupkey", a_name)] = "duplicate key"
    (folder / a_name).write_bytes(a.bytes())

    b_name = f"{prefix}-faults-b.tar"
    b = _Tar()
    for i in range(3):
        b.sample(f"fb-{i}", {"jpg": _image("RGB", "JPEG", seed=20 + i), "txt": cap[12 + i]})
        plan.keep(f"fb-{i}", b_name, "sample before the damage in a truncated shard")
    b.sample("fb-cut", {"jpg": _image("RGB", "PNG", size=(256, 256), seed=30) + b"\0" * 60_000,
                        "txt": cap[15]})
    whole = b.bytes()
    (folder / b_name).write_bytes(whole[: len(whole) - 40_000])
    plan.reject("*", b_name, "unreadable shard", "tar truncated mid-member")

    c_name = f"{prefix}-faults-c.tar"
    (folder / c_name).write_bytes(b"this is not a tar archive\n" * 40)
    plan.reject("*", c_name, "unreadable shard", "non-tar bytes named .tar")
    d_name = f"{prefix}-faults-d.tar"
    (folder / d_name).write_bytes(b"")
    plan.reject("*", d_name, "unreadable shard", "zero-byte shard")
    return plan
