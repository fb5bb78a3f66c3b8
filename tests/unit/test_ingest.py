import io
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mofi_core.config.ingest import IngestConfig
from mofi_core.curate.ingest import (
    RejectRateError,
    _to_rgb_jpeg,
    clean_text,
    ingest,
    normalise_image,
)
from mofi_core.io.shards import ShardWriter, iter_samples
from mofi_core.io.sources import SourceError


def _img(mode="RGB", size=(32, 32), fmt="PNG", **kw) -> bytes:
    color = {"RGB": (10, 20, 30), "RGBA": (10, 20, 30, 128), "L": 90, "CMYK": (1, 2, 3, 4),
             "P": 3, "I;16": 40000}[mode]
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_clean_text_repairs_bytes_and_strips_controls():
    assert clean_text(b"caf\xc3\xa9 \x00 bar\tbaz\n", 100) == "café bar baz"
    assert clean_text(b"bad \xff utf8", 100) == "bad \ufffd utf8"
    assert clean_text(b"x" * 50, 10) == "x" * 10


@pytest.mark.parametrize("mode,fmt", [("RGBA", "PNG"), ("L", "PNG"), ("CMYK", "JPEG"),
                                      ("P", "PNG"), ("I;16", "PNG"), ("RGB", "WEBP")])
def test_odd_image_modes_are_converted_not_rejected(mode, fmt):
    data, w, h = normalise_image(_img(mode, fmt=fmt), IngestConfig())
    img = Image.open(io.BytesIO(data))
    assert (img.format, img.mode, w, h) == ("JPEG", "RGB", 32, 32)


def test_rgb_jpeg_keeps_its_bytes():
    raw = _img("RGB", fmt="JPEG")
    assert normalise_image(raw, IngestConfig())[0] == raw


@pytest.mark.parametrize("data,reason", [
    (b"", "empty image"), (b"not an image at all", "undecodable"),
    (_img(size=(8, 8)), "outside"), (_img(size=(300, 300)), "max_pixels"),
])
def test_bad_images_are_rejected_with_a_reason(data, reason):
    cfg = IngestConfig(max_pixels=200 * 200)
    with pytest.raises(ValueError, match=reason):
        normalise_image(data, cfg)


def _corpus(folder):
    folder.mkdir()
    with ShardWriter(folder / "00000.tar") as w:
        w.write("good1", {"jpg": _img(fmt="JPEG"), "txt": "Mount Kelvara"})
        w.write("gray", {"png": _img("L"), "txt": "gray"})
        w.write("notimg", {"jpg": b"hello", "txt": "x"})
        w.write("notext", {"jpg": _img(fmt="JPEG")})
        w.write("dup", {"jpg": _img(fmt="JPEG"), "txt": "same pixels as good1"})
    with ShardWriter(folder / "00001.tar") as w:
        w.write("good1", {"jpg": _img(fmt="JPEG"), "txt": "duplicate key"})
        w.write("good2", {"jpg": _img(size=(40, 40), fmt="JPEG"), "txt": "Mount Kelvara"})
        w.write("blank", {"jpg": _img(size=(40, 40), fmt="JPEG"), "txt": " \t "})
    # a truncated shard: the first sample survives, the damage is one rejection
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for name, data in [("t1.jpg", _img(fmt="JPEG")), ("t1.txt", b"ok"),
                           ("t2.jpg", _img(size=(64, 64), fmt="PNG") * 20)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (folder / "00002.tar").write_bytes(whole.getvalue()[:3000])


def test_ingest_keeps_every_good_sample_and_lists_every_bad_one(tmp_path):
    _corpus(tmp_path / "corpus")
    result = ingest(tmp_path / "corpus", tmp_path / "out", IngestConfig(max_reject_fraction=0.9))
    manifest = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    rejects = {(r["key"], r["shard"]): r["reason"]
               for r in pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()}
    assert sorted(r["key"] for r in manifest) == ["dup", "good1", "good2", "gray", "t1"]
    assert "undecodable" in rejects[("notimg", "00000.tar")]
    assert "no .txt" in rejects[("notext", "00000.tar")]
    assert rejects[("blank", "00001.tar")] == "empty alt-text"
    assert rejects[("good1", "00001.tar")] == "duplicate key (first in 00000.tar)"
    assert "unreadable shard" in rejects[("*", "00002.tar")]
    by_key = {r["key"]: r for r in manifest}
    assert by_key["dup"]["duplicate_of"] == "good1" and by_key["good1"]["duplicate_of"] is None
    written = [s["__key__"] for shard in sorted((tmp_path / "out" / "shards").glob("*.tar"))
               for s in iter_samples(shard)]
    assert sorted(written) == sorted(by_key)
    assert {r["shard"] for r in manifest} == {"00000.tar", "00001.tar", "00002.tar"}
    # four rejected samples; the unreadable shard is counted apart (as its estimated samples)
    assert (result.metrics()["samples_rejected"], result.metrics()["shards_unreadable"]) == (4, 1)


def test_too_many_rejections_fail_loudly_after_publishing_the_rejects(tmp_path):
    _corpus(tmp_path / "corpus")
    with pytest.raises(RejectRateError, match="max_reject_fraction"):
        ingest(tmp_path / "corpus", tmp_path / "out", IngestConfig(max_reject_fraction=0.1))
    assert (tmp_path / "out" / "rejects.parquet").is_file()


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match=r"no \.tar shards"):
        ingest(tmp_path, tmp_path / "out", IngestConfig())


def test_every_fault_is_a_listed_rejection_and_every_good_sample_is_kept(tmp_path):
    from tests.faults import write_fault_shards

    plan = write_fault_shards(tmp_path / "corpus", ["Mount Kelvara at dawn"])
    result = ingest(tmp_path / "corpus", tmp_path / "out", IngestConfig(max_reject_fraction=1))
    kept = {(r["key"], r["shard"]) for r in
            pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()}
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    # outputs are named by position; the plan names inputs
    sources = sorted(p.name for p in (tmp_path / "corpus").iterdir())
    out_name = {f"{i:05d}.tar": src for i, src in enumerate(sources)}
    assert sorted((k, out_name[s]) for k, s in kept) == sorted(plan.kept)
    got = {}
    for r in rejects:
        assert (r["key"], r["shard"]) not in got, f"rejected twice: {r}"
        got[(r["key"], r["shard"])] = r["reason"]
    assert set(got) == set(plan.rejected)
    for where, fragment in plan.rejected.items():
        assert fragment in got[where], (where, got[where])
    lost_shards = sum(key == "*" for key, _ in plan.rejected)
    assert result.kept == len(plan.kept) and result.shards_unreadable == lost_shards
    assert result.rejected == len(plan.rejected) - lost_shards
    assert len(plan.faults) >= 30
    # members are read, never extracted: nothing appeared outside the output folder
    assert not Path("/var/mofi-absolute.jpg").exists()
    assert not any(p.name.startswith("escape") for d in (tmp_path, tmp_path / "out")
                   for p in d.iterdir())
    for shard in (tmp_path / "out" / "shards").glob("*.tar"):
        for s in iter_samples(shard):
            img = Image.open(io.BytesIO(s["jpg"]))
            assert (img.format, img.mode) == ("JPEG", "RGB")
            assert s["txt"].decode("utf-8").isprintable()


def test_two_runs_on_the_fault_corpus_give_byte_identical_outputs(tmp_path):
    """Reasons are stable text: no memory address or temporary name leaks into rejects.parquet
    (DVC hashes it; before, PIL's '<_io.BytesIO object at 0x...>' changed it on every run)."""
    from tests.faults import write_fault_shards

    write_fault_shards(tmp_path / "corpus", ["Mount Kelvara at dawn"])
    cfg = IngestConfig(max_reject_fraction=1)
    for out in ("a", "b"):
        ingest(tmp_path / "corpus", tmp_path / out, cfg)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
                         for f in files)
    reasons = pq.read_table(tmp_path / "a" / "rejects.parquet")["reason"].to_pylist()
    assert not [r for r in reasons if "0x" in r or (".fetch-" in r and "*" not in r)]
    assert any("cannot identify image file" in r for r in reasons)  # the case that leaked


def test_stable_reason_drops_addresses_and_temporary_names():
    from mofi_core.curate.ingest import stable_reason

    assert stable_reason("cannot identify image file <_io.BytesIO object at 0x7f3a2b1c9e50>") \
        == "cannot identify image file <_io.BytesIO object>"
    assert stable_reason("[Errno 5] '/p/.fetch-k2_x9.tar'") == "[Errno 5] '/p/.fetch-*'"
    assert stable_reason("image size 3x3 outside [16, 4096]") == \
        "image size 3x3 outside [16, 4096]"


def test_a_sample_cut_by_truncation_says_so(tmp_path):
    """The shard ends (no end-of-archive) right after b.jpg: b's reason names the cut, not only
    the missing .txt; a, complete before the damage, is kept."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, format="JPEG")
    jpg = buf.getvalue()
    shard = tmp_path / "corpus" / "00000.tar"
    shard.parent.mkdir()
    with ShardWriter(shard) as w:
        w.write("a", {"jpg": jpg, "txt": b"Mount Kelvara"})
        w.write("b", {"jpg": jpg, "txt": b"Mount Kelvara again"})

    def padded(n: int) -> int:
        return 512 + -(-n // 512) * 512

    cut = padded(len(jpg)) + padded(len(b"Mount Kelvara")) + padded(len(jpg))
    shard.write_bytes(shard.read_bytes()[:cut])
    ingest(tmp_path / "corpus", tmp_path / "out", IngestConfig(max_reject_fraction=1))
    rejects = {r["key"]: r["reason"] for r in
               pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()}
    assert rejects["b"] == "cut off where the shard ends early: no .txt alt-text member"
    assert rejects["*"].startswith("unreadable shard")
    kept = pq.read_table(tmp_path / "out" / "manifest.parquet")["key"].to_pylist()
    assert kept == ["a"]


def _pixel(data: bytes) -> tuple[int, int, int]:
    img = Image.open(io.BytesIO(data))
    assert (img.format, img.mode) == ("JPEG", "RGB")
    return img.getpixel((8, 8))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _palette(transparent: bool) -> Image.Image:
    img = Image.new("P", (16, 16), 1)
    img.putpalette([0, 0, 0, 200, 40, 40] + [0] * 762)
    if transparent:
        img.info["transparency"] = 1  # index 1 (the red) is see-through
    return img


@pytest.mark.parametrize(("image", "want"), [
    (Image.new("RGBA", (16, 16), (200, 40, 40, 0)), (255, 255, 255)),  # clear: white, not red
    (Image.new("RGBA", (16, 16), (0, 0, 0, 255)), (0, 0, 0)),
    (Image.new("RGBA", (16, 16), (0, 0, 0, 128)), (127, 127, 127)),  # half over white
    (Image.new("LA", (16, 16), (0, 0)), (255, 255, 255)),
    (Image.new("RGBA", (16, 16), (0, 0, 0, 0)).convert("PA"), (255, 255, 255)),
    (_palette(True), (255, 255, 255)),
    (_palette(False), (200, 40, 40)),
    (Image.new("I;16", (16, 16), 51200), (200, 200, 200)),  # 16-bit scaled by 1/256
    (Image.new("I;16B", (16, 16), 25600), (100, 100, 100)),
    (Image.new("I;16L", (16, 16), 12800), (50, 50, 50)),
    (Image.new("I", (16, 16), 38400), (150, 150, 150)),
    (Image.new("L", (16, 16), 90), (90, 90, 90)),
    (Image.new("RGB", (16, 16), (10, 200, 30)), (10, 200, 30)),
])
def test_conversion_composites_alpha_on_white_and_scales_16_bit(image, want):
    cfg = IngestConfig(jpeg_quality=100, min_side=8)
    if image.mode in ("PA", "I;16B", "I;16L", "I"):  # as decoded (PNG holds none of them)
        data = _to_rgb_jpeg(image, cfg.jpeg_quality)
    else:
        data = normalise_image(_png(image), cfg)[0]
    got = _pixel(data)
    tolerance = 0 if image.mode.startswith("I") else 2  # flat grey survives JPEG exactly
    assert all(abs(g - w) <= tolerance for g, w in zip(got, want, strict=True)), (image.mode, got)


def test_conversion_uses_the_configured_jpeg_quality():
    import numpy as np

    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype="uint8"), "RGBA")
    low = normalise_image(_png(noisy), IngestConfig(jpeg_quality=10))[0]
    high = normalise_image(_png(noisy), IngestConfig(jpeg_quality=95))[0]
    assert len(low) < len(high) / 2


def _sample(key="k1", **members):
    from mofi_core.curate.ingest import check_sample

    sample = {"__key__": key, **members}
    return check_sample(sample, IngestConfig(max_text_bytes=20, max_text_chars=8, min_side=8))


UNSAFE = ("unsafe key {!r}: must be 1-256 printable characters without '/' and not start "
          "with '.'")


@pytest.mark.parametrize("key", ["", "a/b", ".hidden", "tab\there", "x" * 257])
def test_every_unsafe_key_is_rejected_with_the_rule(key):
    with pytest.raises(ValueError) as err:
        _sample(key, jpg=_img(fmt="JPEG"), txt=b"a")
    assert str(err.value) == UNSAFE.format(key)


@pytest.mark.parametrize("key", ["x" * 256, "a.b", "k-1_2 3"])
def test_keys_at_the_rule_edges_are_kept(key):
    assert _sample(key, jpg=_img(fmt="JPEG"), txt=b"a").key == key


@pytest.mark.parametrize(("members", "reason"), [
    ({"__errors__": ["bad header", "short read"], "jpg": b"", "txt": b"a"},
     "bad header; short read"),
    ({"txt": b"a", "json": b"{}"}, "no image member (.jpg/.png/.webp/.gif)"),
    ({"jpg": "IMG"}, "no .txt alt-text member"),
    ({"jpg": "IMG", "txt": b"x" * 21}, "alt-text of 21 bytes (> ingest.max_text_bytes 20)"),
    ({"jpg": "IMG", "txt": b" \x00\t "}, "empty alt-text"),
    ({"jpg": "IMG", "txt": b"a", "json": b"[1]"},
     "malformed .json metadata: a list, not an object"),
    ({"jpg": "IMG", "txt": b"a", "json": b"\xff"},
     "malformed .json metadata: 'utf-8' codec can't decode byte 0xff in position 0: invalid "
     "start byte"),
])
def test_each_member_fault_names_its_reason(members, reason):
    members = {k: (_img(fmt="JPEG") if v == "IMG" else v) for k, v in members.items()}
    with pytest.raises(ValueError) as err:
        _sample(**members)
    assert str(err.value) == reason


def test_a_good_sample_at_the_limits():
    import hashlib

    png = _img("RGB", size=(8, 9))
    got = _sample("k", png=png, txt=b"x" * 20, json=b'{"url": "u"}')  # exactly 20 bytes
    assert (got.key, got.text, got.width, got.height) == ("k", "x" * 8, 8, 9)  # cut to 8 chars
    assert got.sha256 == hashlib.sha256(got.jpg).hexdigest()
    assert Image.open(io.BytesIO(got.jpg)).format == "JPEG"
    # the first image member in the order jpg, jpeg, png, webp, gif is the one used
    jpg = _img("RGB", size=(10, 10), fmt="JPEG")
    assert _sample("k", png=png, jpg=jpg, txt=b"a").jpg == jpg


def test_every_manifest_and_reject_row_and_the_metrics_whole(tmp_path):
    import hashlib

    _corpus(tmp_path / "corpus")
    result = ingest(tmp_path / "corpus", tmp_path / "out", IngestConfig(max_reject_fraction=0.9))
    manifest = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "manifest.parquet")
                .to_pylist()}
    good1 = manifest["good1"]
    jpg = next(s["jpg"] for s in iter_samples(tmp_path / "out" / "shards" / "00000.tar")
               if s["__key__"] == "good1")
    img = Image.open(io.BytesIO(jpg))
    assert good1 == {"key": "good1", "shard": "00000.tar", "width": img.width,
                     "height": img.height, "sha256": hashlib.sha256(jpg).hexdigest(),
                     "text": "Mount Kelvara", "duplicate_of": None}
    assert img.format == "JPEG" and manifest["t1"]["duplicate_of"] == "good1"
    written = {s["__key__"]: s for s in iter_samples(tmp_path / "out" / "shards" / "00000.tar")}
    assert set(written["good1"]) >= {"__key__", "jpg", "txt"}
    assert written["good1"]["txt"].decode() == good1["text"]
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert all(set(r) == {"key", "shard", "reason"} and r["reason"] for r in rejects)
    lost = result.samples_lost
    assert lost >= 1 and result.metrics() == {
        "samples_in": 5 + 4 + lost, "samples_kept": 5, "samples_rejected": 4,
        "duplicates_flagged": 2, "shards_unreadable": 1, "samples_lost_estimate": lost,
        "reject_fraction": (4 + lost) / (9 + lost), "shards": 3}


def test_the_samples_an_unreadable_shard_held_are_estimated_from_the_median_shard():
    from mofi_core.curate.ingest import IngestResult, estimate_lost

    def shard(seen, unreadable=False):
        return {"samples_seen": seen, "unreadable": unreadable}

    # complete shards of 10, 12 and 50: the median, 12, not the mean
    assert estimate_lost([shard(10), shard(50), shard(12), shard(4, True)]) == 8
    assert estimate_lost([shard(10), shard(12), shard(11, True), shard(12, True)]) == 2  # 1+1
    assert estimate_lost([shard(3, True)]) == 1  # nothing to compare with: at least one
    assert estimate_lost([shard(10), shard(20)]) == 0
    assert estimate_lost([shard(10), shard(20), shard(0, True)]) == 20  # upper median of two
    empty = IngestResult(kept=0, rejected=0, duplicates=0, shards=0, shards_skipped=0)
    assert empty.metrics()["reject_fraction"] == 0.0 and empty.metrics()["samples_in"] == 0


def test_size_limits_are_inclusive_and_an_empty_image_says_so():
    with pytest.raises(ValueError) as err:
        normalise_image(b"", IngestConfig())
    assert str(err.value) == "empty image"
    at = IngestConfig(max_pixels=32 * 40, max_side=40, min_side=32)
    assert normalise_image(_img(size=(32, 40)), at)[1:] == (32, 40)  # exactly at every limit
    with pytest.raises(ValueError, match=r"^image too large \(32x41 > max_pixels 1280\)$"):
        normalise_image(_img(size=(32, 41)), at)
    with pytest.raises(ValueError, match=r"^image size 41x31 outside \[32, 40\]$"):
        normalise_image(_img(size=(41, 31)), IngestConfig(max_side=40, min_side=32))
