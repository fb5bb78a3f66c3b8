"""ingest: decode-check every sample, normalise it, write clean shards + manifest + rejects.

A bad sample is a counted, listed rejection (key, shard, reason), never a crash; an unreadable
shard is a rejection of the whole shard. Images are normalised to RGB JPEG (JPEG input that is
already RGB keeps its original bytes, so nothing is re-compressed needlessly). Exact duplicates
(same sha256 of the stored bytes) are kept but flagged with ``duplicate_of``.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mofi_core.config import IngestConfig
from mofi_core.io import tables
from mofi_core.io.atomic import atomic_dir
from mofi_core.io.shards import ShardWriter, iter_samples, list_shards, shard_name

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class RejectRateError(RuntimeError):
    """Too large a share of the corpus was rejected: the input is probably not what was meant."""


@dataclass
class CleanSample:
    key: str
    jpg: bytes
    text: str
    width: int
    height: int
    sha256: str


@dataclass
class IngestResult:
    manifest: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        total = len(self.manifest) + len(self.rejects)
        dups = sum(1 for r in self.manifest if r["duplicate_of"])
        return {"samples_in": total, "samples_kept": len(self.manifest),
                "samples_rejected": len(self.rejects), "duplicates_flagged": dups,
                "reject_fraction": len(self.rejects) / total if total else 0.0}


def clean_text(raw: bytes, max_chars: int) -> str:
    """UTF-8 (invalid bytes replaced), NFC, control characters removed, whitespace collapsed."""
    text = unicodedata.normalize("NFC", raw.decode("utf-8", errors="replace"))
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text[:max_chars]


def normalise_image(data: bytes, cfg: IngestConfig) -> tuple[bytes, int, int]:
    """Return RGB JPEG bytes and size, or raise ``ValueError`` with the reason for rejection."""
    if not data:
        raise ValueError("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > cfg.max_pixels:
                raise ValueError(f"image too large ({w}x{h} > max_pixels {cfg.max_pixels})")
            img.load()
    except (OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            Image.UnidentifiedImageError) as err:
        raise ValueError(f"undecodable image: {type(err).__name__}: {err}") from None
    if min(w, h) < cfg.min_side or max(w, h) > cfg.max_side:
        raise ValueError(f"image size {w}x{h} outside [{cfg.min_side}, {cfg.max_side}]")
    if img.format == "JPEG" and img.mode == "RGB":
        return data, w, h
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
        rgb = img.point(lambda v: v / 256).convert("L").convert("RGB")
    else:
        rgb = img.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=cfg.jpeg_quality)
    return buf.getvalue(), w, h


def check_sample(sample: dict, cfg: IngestConfig) -> CleanSample:
    """Validate one grouped tar sample; ``ValueError`` names the reason to reject it."""
    key = sample["__key__"]
    if "/" in key or key.startswith(".") or not key:
        raise ValueError(f"unsafe key {key!r}")
    image_ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if image_ext is None:
        raise ValueError("no image member (.jpg/.png/.webp/.gif)")
    if "txt" not in sample:
        raise ValueError("no .txt alt-text member")
    jpg, w, h = normalise_image(sample[image_ext], cfg)
    return CleanSample(key=key, jpg=jpg, text=clean_text(sample["txt"], cfg.max_text_chars),
                       width=w, height=h, sha256=hashlib.sha256(jpg).hexdigest())


def _read_shard(shard: Path, cfg: IngestConfig, result: IngestResult, seen_keys: set[str]
                ) -> list[CleanSample]:
    clean = []
    try:
        for sample in iter_samples(shard):
            key = sample["__key__"]
            if key in seen_keys:
                result.rejects.append({"key": key, "shard": shard.name, "reason": "duplicate key"})
                continue
            seen_keys.add(key)
            try:
                clean.append(check_sample(sample, cfg))
            except ValueError as err:
                result.rejects.append({"key": key, "shard": shard.name, "reason": str(err)})
    except (tarfile.TarError, OSError, EOFError) as err:
        # samples read before the damage are kept; the rest of the shard is one rejection
        result.rejects.append({"key": "*", "shard": shard.name,
                               "reason": f"unreadable shard: {type(err).__name__}: {err}"})
    return clean


def ingest(corpus_shards: Path, out_dir: Path, cfg: IngestConfig) -> IngestResult:
    """Read every shard under ``corpus_shards``; publish ``out_dir`` atomically."""
    result = IngestResult()
    seen_keys: set[str] = set()
    first_by_hash: dict[str, str] = {}
    clean: list[CleanSample] = []
    for shard in list_shards(corpus_shards):
        clean.extend(_read_shard(shard, cfg, result, seen_keys))
    with atomic_dir(out_dir) as out:
        (out / "shards").mkdir()
        for start in range(0, len(clean), cfg.samples_per_shard):
            name = shard_name(start // cfg.samples_per_shard)
            with ShardWriter(out / "shards" / name) as writer:
                for s in clean[start:start + cfg.samples_per_shard]:
                    writer.write(s.key, {"jpg": s.jpg, "txt": s.text})
                    dup = first_by_hash.setdefault(s.sha256, s.key)
                    result.manifest.append({
                        "key": s.key, "shard": name, "width": s.width, "height": s.height,
                        "sha256": s.sha256, "text": s.text,
                        "duplicate_of": dup if dup != s.key else None})
        tables.write_table(out / "manifest.parquet",
                           tables.from_rows(result.manifest, tables.MANIFEST), tables.MANIFEST)
        tables.write_table(out / "rejects.parquet",
                           tables.from_rows(result.rejects, tables.REJECTS), tables.REJECTS)
    # published first, so the rejects table is there to read when this fails
    frac = result.metrics()["reject_fraction"]
    if frac > cfg.max_reject_fraction:
        raise RejectRateError(
            f"ingest rejected {frac:.1%} of samples (> ingest.max_reject_fraction "
            f"{cfg.max_reject_fraction:.0%}); reasons are in {out_dir / 'rejects.parquet'} "
            f"({len(result.rejects)} rows): fix the corpus or raise the limit")
    return result


def run(cfg: IngestConfig, ctx) -> dict:
    """Stage ``ingest``: corpus shards -> clean shards + manifest + rejects."""
    result = ingest(ctx.layout.corpus_shards, ctx.layout.ingest, cfg)
    ctx.artifacts.append(ctx.layout.ingest / "rejects.parquet")
    return result.metrics()
