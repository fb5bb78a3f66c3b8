"""ingest: decode-check every sample, normalise it, write clean shards + manifest + rejects.

Works shard by shard: input shard ``i`` (from ``ingest.input``: folder, glob/brace pattern,
manifest of URLs) becomes ``shards/<i>.tar`` plus ``parts/<i>.manifest.parquet`` and
``parts/<i>.rejects.parquet``, each written atomically by a worker process; a re-run skips
shards already done on the same input bytes and params (records in ``.mofi/state/ingest``).
A final pass, streaming over the parts, rejects keys already seen in an earlier shard, flags
exact duplicate images (same sha256 of the stored bytes: kept, ``duplicate_of`` = the first
key) and concatenates ``manifest.parquet`` and ``rejects.parquet``.

A bad sample is a counted, listed rejection (key, shard, reason), never a crash; an unreadable
shard keeps what was read before the damage plus one rejection for the rest, and counts as the
samples it would have held (the median of the complete shards, less what was read) in the
reject gate. A shard that cannot be *fetched* (S3 or HTTP down, throttled, refused credentials)
is not bad data: the fetch is retried (``runtime.ingest.fetch_attempts``) and then the stage
fails naming the shard; nothing about it is written or marked done. Images are
normalised to RGB JPEG (JPEG input that is already RGB keeps its original bytes, so nothing is
re-compressed needlessly)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import unicodedata
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mofi_core.config.ingest import IngestConfig
from mofi_core.io import tables
from mofi_core.io.atomic import atomic_path
from mofi_core.io.hashing import fingerprint
from mofi_core.io.shards import ShardProblem, ShardWriter, iter_samples, shard_name
from mofi_core.io.sources import (
    SHARD_SUFFIXES,
    FetchPolicy,
    SourceError,
    expand_sources,
    missing_local,
    open_source,
    source_identity,
    source_name,
)
from mofi_core.parallel import ResumeState, ShardJob, iter_shards, remove_stale
from mofi_core.progress import Progress
from mofi_core.stages import StageVerdict

if TYPE_CHECKING:
    from mofi_core.context import StageContext

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# parts of exception texts that differ between two runs on the same bytes
_UNSTABLE = ((re.compile(r" at 0x[0-9a-fA-F]+"), ""),  # <_io.BytesIO object at 0x7f...>
             (re.compile(r"\.fetch-[^/\s'\"]+"), ".fetch-*"))  # a download's temporary name


def stable_reason(text: str) -> str:
    """A rejection reason as stable text: the same input gives the same bytes in
    ``rejects.parquet`` on every run and machine (memory addresses and temporary file names
    removed), so DVC's hashes and re-runs stay byte-identical."""
    for pattern, repl in _UNSTABLE:
        text = pattern.sub(repl, text)
    return text


class RejectRateError(StageVerdict):
    """Too large a share of the corpus was rejected: the input is probably not what was meant.
    The outputs are complete and kept: the rejects table says why each sample went."""


@dataclass
class CleanSample:
    key: str
    jpg: bytes
    text: str
    width: int
    height: int
    sha256: str


def clean_text(raw: bytes, max_chars: int) -> str:
    """UTF-8 (invalid bytes replaced), NFC, control characters removed, whitespace collapsed."""
    text = unicodedata.normalize("NFC", raw.decode("utf-8", errors="replace"))
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text[:max_chars]


def normalise_image(data: bytes, cfg: IngestConfig) -> tuple[bytes, int, int]:
    """Return RGB JPEG bytes and size, or raise ``ValueError`` with the reason for rejection.

    The bytes are untrusted: any failure of the decoder or the conversion (crafted files make
    Pillow raise more than OSError) is a rejection naming the error, never a crash."""
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
        if min(w, h) < cfg.min_side or max(w, h) > cfg.max_side:
            raise ValueError(f"image size {w}x{h} outside [{cfg.min_side}, {cfg.max_side}]")
        if img.format == "JPEG" and img.mode == "RGB":
            return data, w, h
        return _to_rgb_jpeg(img, cfg.jpeg_quality), w, h
    except ValueError:
        raise
    except Exception as err:  # untrusted bytes: every decoder failure is a rejection
        raise ValueError(f"undecodable image: {type(err).__name__}: {err}") from None


def _to_rgb_jpeg(img: Image.Image, quality: int) -> bytes:
    """Alpha is composited on white; 16-bit is scaled to 8; everything else via convert."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # via 32-bit "I": Pillow's point() refuses the byte-ordered 16-bit modes
        rgb = img.convert("I").point(lambda v: v / 256).convert("L").convert("RGB")
    else:
        rgb = img.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def check_sample(sample: dict, cfg: IngestConfig) -> CleanSample:
    """Validate one grouped tar sample; ``ValueError`` names the reason to reject it."""
    key = sample["__key__"]
    if not key or "/" in key or key.startswith(".") or not key.isprintable() or len(key) > 256:
        raise ValueError(f"unsafe key {key!r}: must be 1-256 printable characters without '/' "
                         "and not start with '.'")
    if sample.get("__errors__"):
        raise ValueError("; ".join(sample["__errors__"]))
    image_ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if image_ext is None:
        raise ValueError("no image member (.jpg/.png/.webp/.gif)")
    if "txt" not in sample:
        raise ValueError("no .txt alt-text member")
    raw_text = sample["txt"]
    if len(raw_text) > cfg.max_text_bytes:
        raise ValueError(f"alt-text of {len(raw_text)} bytes (> ingest.max_text_bytes "
                         f"{cfg.max_text_bytes})")
    text = clean_text(raw_text, cfg.max_text_chars)
    if not text:
        raise ValueError("empty alt-text")
    if "json" in sample:
        try:
            meta = json.loads(sample["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"malformed .json metadata: {err}") from None
        if not isinstance(meta, dict):
            raise ValueError(f"malformed .json metadata: a {type(meta).__name__}, not an object")
    jpg, w, h = normalise_image(sample[image_ext], cfg)
    return CleanSample(key=key, jpg=jpg, text=text, width=w, height=h,
                       sha256=hashlib.sha256(jpg).hexdigest())


# --- one shard (runs in a worker process) -----------------------------------------------------

def shard_outputs(out_dir: Path, name: str) -> list[Path]:
    return [out_dir / "shards" / f"{name}.tar", out_dir / "parts" / f"{name}.manifest.parquet",
            out_dir / "parts" / f"{name}.rejects.parquet"]


def ingest_shard(job: ShardJob, out_dir: Path, cfg: IngestConfig, scratch: Path | None = None
                 ) -> tuple[list[Path], dict[str, int]]:
    """Clean one input shard into ``shards/<name>.tar`` + its manifest and rejects parts;
    a remote shard is fetched into ``scratch`` first.

    Never raises for bad data: an unreadable or truncated shard keeps the samples read before
    the damage and adds one ``key="*"`` rejection naming the error (summary ``unreadable``).
    A failed fetch raises :class:`~mofi_core.io.sources.TransportError` and writes nothing.
    """
    tar_out, manifest_out, rejects_out = shard_outputs(out_dir, job.name)
    src_name = source_name(job.source)
    rows: list[dict] = []
    rejects: list[dict] = []
    unreadable = 0
    seen: set[str] = set()
    last_missing: int | None = None  # the last sample's rejection, if it lacked a member
    problems: list[ShardProblem] = []  # members outside any sample, in tar order
    with ShardWriter(tar_out) as writer:
        try:
            policy = FetchPolicy(cfg.fetch_attempts, cfg.fetch_backoff_s)
            with open_source(job.source, tmp_dir=scratch, policy=policy) as local:
                for sample in iter_samples(local, problems.append, cfg.max_member_bytes):
                    rejects += [{"key": p.key, "shard": src_name, "reason": p.reason}
                                for p in problems]
                    problems.clear()
                    key = sample["__key__"]
                    if key in seen:
                        rejects.append({"key": key, "shard": src_name, "reason": "duplicate key"})
                        continue
                    seen.add(key)
                    try:
                        s = check_sample(sample, cfg)
                    except ValueError as err:
                        rejects.append({"key": key, "shard": src_name, "reason": str(err)})
                        last_missing = len(rejects) - 1 if str(err).startswith("no ") else None
                        continue
                    last_missing = None
                    writer.write(s.key, {"jpg": s.jpg, "txt": s.text})
                    rows.append({"key": s.key, "shard": tar_out.name, "width": s.width,
                                 "height": s.height, "sha256": s.sha256, "text": s.text,
                                 "duplicate_of": None})
        except (tarfile.TarError, OSError, EOFError) as err:  # the shard's bytes are bad
            unreadable = 1
            if last_missing is not None:  # the shard's last sample lost members to the cut
                cut = rejects[last_missing]
                cut["reason"] = f"cut off where the shard ends early: {cut['reason']}"
            rejects.append({"key": "*", "shard": src_name,
                            "reason": f"unreadable shard: {type(err).__name__}: {err}"})
        rejects += [{"key": p.key, "shard": src_name, "reason": p.reason} for p in problems]
    tables.write_table(manifest_out, tables.from_rows(rows, tables.MANIFEST), tables.MANIFEST)
    rejects = [{**r, "reason": stable_reason(r["reason"])} for r in rejects]
    tables.write_table(rejects_out, tables.from_rows(rejects, tables.REJECTS), tables.REJECTS)
    return [tar_out, manifest_out, rejects_out], {
        "kept": len(rows), "rejected": len(rejects), "unreadable": unreadable,
        "samples_seen": len(rows) + len(rejects) - unreadable}


# --- the whole corpus ---------------------------------------------------------------------------

@dataclass
class IngestResult:
    kept: int
    rejected: int  # rejected samples (rows of rejects.parquet less one per unreadable shard)
    duplicates: int
    shards: int
    shards_skipped: int
    shards_unreadable: int = 0
    samples_lost: int = 0  # estimated samples the unreadable shards held beyond what was read

    def metrics(self) -> dict[str, float]:
        total = self.kept + self.rejected + self.samples_lost
        return {"samples_in": total, "samples_kept": self.kept,
                "samples_rejected": self.rejected, "duplicates_flagged": self.duplicates,
                "shards_unreadable": self.shards_unreadable,
                "samples_lost_estimate": self.samples_lost,
                "reject_fraction": (self.rejected + self.samples_lost) / total if total else 0.0,
                "shards": self.shards}


def estimate_lost(summaries: list[dict]) -> int:
    """Samples the unreadable shards would have held beyond those read from them: shards of a
    corpus are written to a common size, so each counts as the median of the shards read to the
    end (at least one sample per unreadable shard, whatever was read before the damage)."""
    complete = sorted(s["samples_seen"] for s in summaries if not s["unreadable"])
    typical = complete[len(complete) // 2] if complete else 0
    return sum(max(1, typical - s["samples_seen"]) for s in summaries if s["unreadable"])


def make_jobs(sources: list[str]) -> list[ShardJob]:
    """One job per input shard, named by its position: output ``i`` always comes from input
    ``i``, so a re-run maps every shard to the same outputs."""
    return [ShardJob(name=shard_name(i).removesuffix(".tar"), source=src,
                     identity=source_identity(src)) for i, src in enumerate(sources)]


def ingest(sources: list[str] | Path, out_dir: Path, cfg: IngestConfig,
           state_dir: Path | None = None, scratch: Path | None = None) -> IngestResult:
    """Ingest every source shard into ``out_dir`` (shards/, parts/, manifest.parquet,
    rejects.parquet). With ``state_dir``, shards finished by an earlier run on the same input
    and params are skipped. Remote shards are fetched into ``scratch`` (default: the system
    temporary folder). A folder may be passed for ``sources``."""
    if isinstance(sources, Path):
        sources = expand_sources(str(sources), Path.cwd())
    jobs = make_jobs(sources)
    for folder in (out_dir / "shards", out_dir / "parts"):
        remove_stale(folder, (j.name for j in jobs))
    for f in [*out_dir.glob(".fetch-*"),  # downloads of a killed run (older versions)
              *(scratch.glob(".fetch-*") if scratch is not None and scratch.is_dir() else ())]:
        f.unlink()
    # "v2": summaries carry what the lost-sample estimate needs (older records are redone)
    state = ResumeState(state_dir, fingerprint("ingest", "v2", cfg.result_key())) \
        if state_dir is not None else None
    summaries: list[dict] = []
    skipped = kept_so_far = rejected_so_far = 0
    with Progress("ingest", len(jobs), "shard") as progress:  # counted as shards come back
        for _, summary, was_done in iter_shards(
                partial(ingest_shard, out_dir=out_dir, cfg=cfg, scratch=scratch), jobs,
                lambda j: shard_outputs(out_dir, j.name), state, cfg.workers):
            summaries.append(summary)
            skipped += was_done
            kept_so_far += summary["kept"]
            rejected_so_far += summary["rejected"]
            progress.advance(resumed=was_done, kept=kept_so_far, rejected=rejected_so_far)
    names = [j.name for j in jobs]
    dropped = _drop_cross_shard_duplicate_keys(out_dir, names,
                                               [source_name(j.source) for j in jobs])
    duplicate_of = _duplicate_images(out_dir, names)
    kept, rejected = _merge(out_dir, names, duplicate_of)
    assert kept == sum(s["kept"] for s in summaries) - dropped
    unreadable = sum(s["unreadable"] for s in summaries)
    result = IngestResult(kept=kept, rejected=rejected - unreadable,
                          duplicates=len(duplicate_of), shards=len(jobs), shards_skipped=skipped,
                          shards_unreadable=unreadable, samples_lost=estimate_lost(summaries))
    # published first, so the rejects table is there to read when this fails
    frac = result.metrics()["reject_fraction"]
    if frac > cfg.max_reject_fraction:
        lost = (f", {unreadable} unreadable shard(s) counted as ~{result.samples_lost} lost "
                "samples" if unreadable else "")
        raise RejectRateError(
            f"ingest rejected or lost {frac:.1%} of samples (> ingest.max_reject_fraction "
            f"{cfg.max_reject_fraction:.0%}{lost}); reasons are in "
            f"{out_dir / 'rejects.parquet'} ({rejected} rows): fix the corpus or raise the "
            "limit", result.metrics())
    return result


def _h64(values: list[str]) -> np.ndarray:
    return np.fromiter((int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "big")
                        for v in values), dtype=np.uint64, count=len(values))


def _repeated(column: str, out_dir: Path, names: list[str], to_u64) -> dict[str, list[tuple]]:
    """Exact values of ``column`` that occur more than once across the manifest parts, with
    their (part position, row) in order. Memory: 8 bytes per sample plus the repeats."""
    hashes, sizes = [], []
    for name in names:
        col = pq.read_table(out_dir / "parts" / f"{name}.manifest.parquet",
                            columns=[column])[column].to_pylist()
        hashes.append(to_u64(col))
        sizes.append(len(col))
    if not hashes or not sum(sizes):
        return {}
    allh = np.concatenate(hashes)
    del hashes
    ordered = np.sort(allh)  # one copy; the repeated values are few
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    suspect = np.flatnonzero(np.isin(allh, repeated))
    if not len(suspect):
        return {}
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    groups: dict[str, list[tuple]] = {}
    for part in np.unique(np.searchsorted(offsets, suspect, side="right") - 1):
        rows = suspect[(suspect >= offsets[part]) & (suspect < offsets[part + 1])] - offsets[part]
        col = pq.read_table(out_dir / "parts" / f"{names[part]}.manifest.parquet",
                            columns=sorted({"key", column}))
        keys, vals = col["key"].to_pylist(), col[column].to_pylist()
        for r in rows.tolist():
            groups.setdefault(vals[r], []).append((int(part), r, keys[r]))
    return {v: g for v, g in groups.items() if len(g) > 1}


def _drop_cross_shard_duplicate_keys(out_dir: Path, names: list[str], src_names: list[str]
                                     ) -> int:
    """A key seen in an earlier shard is rejected in later ones (their outputs are rewritten;
    their resume records no longer match, so a re-run redoes them the same way)."""
    drop: dict[int, dict[str, str]] = {}
    for key, where in _repeated("key", out_dir, names, _h64).items():
        first = src_names[where[0][0]]
        for part, _, _ in where[1:]:
            drop.setdefault(part, {})[key] = f"duplicate key (first in {first})"
    for part, keys in drop.items():
        tar, manifest, rejects = shard_outputs(out_dir, names[part])
        with ShardWriter(tar) as writer:
            for s in iter_samples(tar):
                if s["__key__"] not in keys:
                    key = s.pop("__key__")
                    writer.write(key, s)
        table = pq.read_table(manifest)
        mask = pa.array([k not in keys for k in table["key"].to_pylist()])
        tables.write_table(manifest, table.filter(mask), tables.MANIFEST)
        old = pq.read_table(rejects).to_pylist()
        new = [{"key": k, "shard": src_names[part], "reason": r}
               for k, r in sorted(keys.items())]
        tables.write_table(rejects, tables.from_rows(old + new, tables.REJECTS), tables.REJECTS)
    return sum(len(k) for k in drop.values())


def _duplicate_images(out_dir: Path, names: list[str]) -> dict[str, str]:
    """key -> key of the first sample (in shard order) with the same image bytes."""
    def u64(hexes: list[str]) -> np.ndarray:
        return np.fromiter((int(h[:16], 16) for h in hexes), dtype=np.uint64, count=len(hexes))

    return {key: where[0][2] for where in _repeated("sha256", out_dir, names, u64).values()
            for _, _, key in where[1:]}


def _merge(out_dir: Path, names: list[str], duplicate_of: dict[str, str]) -> tuple[int, int]:
    """Concatenate the parts into manifest.parquet and rejects.parquet, one row group per
    shard, streaming (one part in memory at a time)."""
    kept = rejected = 0
    with atomic_path(out_dir / "manifest.parquet") as tmp_m, \
            atomic_path(out_dir / "rejects.parquet") as tmp_r:
        with pq.ParquetWriter(tmp_m, tables.MANIFEST) as wm, \
                pq.ParquetWriter(tmp_r, tables.REJECTS) as wr:
            for name in names:
                part = tables.read_table(out_dir / "parts" / f"{name}.manifest.parquet",
                                         tables.MANIFEST)
                if duplicate_of:
                    dup = pa.array([duplicate_of.get(k) for k in part["key"].to_pylist()],
                                   pa.string())
                    part = part.set_column(part.schema.get_field_index("duplicate_of"),
                                           "duplicate_of", dup)
                wm.write_table(part)
                rej = tables.read_table(out_dir / "parts" / f"{name}.rejects.parquet",
                                        tables.REJECTS)
                wr.write_table(rej)
                kept, rejected = kept + part.num_rows, rejected + rej.num_rows
    return kept, rejected


def check(cfg: IngestConfig, ctx: StageContext) -> None:
    """Before anything is read or replaced: ``ingest.input`` names shards, and not only missing
    ones (a typo would otherwise replace the last ingest with a 100 % rejected one)."""
    if _storage_sources(cfg, ctx) is not None:
        return
    sources = expand_sources(cfg.input, ctx.layout.root)
    gone = missing_local(sources)
    if len(gone) == len(sources):
        raise SourceError(f"ingest.input {cfg.input!r}: none of its {len(sources)} shard(s) "
                          f"exists (first: {gone[0]}); check the path")


def run(cfg: IngestConfig, ctx: StageContext) -> dict:
    """Stage ``ingest``: input shards -> clean shards + manifest + rejects."""
    sources = _storage_sources(cfg, ctx) or expand_sources(cfg.input, ctx.layout.root)
    result = ingest(sources, ctx.layout.ingest, cfg, state_dir=ctx.layout.state("ingest"),
                    scratch=ctx.layout.scratch("ingest"))
    ctx.artifacts.append(ctx.layout.ingest / "rejects.parquet")
    if result.shards_skipped:
        print(f"ingest: {result.shards_skipped} of {result.shards} shards already done, skipped")
    return result.metrics()


# with a storage root, the corpus shards are streamed from S3 (never downloaded first)


def _storage_sources(cfg: IngestConfig, ctx) -> list[str] | None:
    """The published shards' URLs when ``ingest.input`` is a project path another stage
    publishes under the storage root; None otherwise (the input is read as given)."""
    if ctx.storage is None or "://" in cfg.input or Path(cfg.input).is_absolute():
        return None
    owner = ctx.storage.input_for(cfg.input)
    if owner is None:
        return None
    urls = ctx.storage.storage.object_urls(cfg.input, *owner, suffix=SHARD_SUFFIXES)
    if not urls:
        raise FileNotFoundError(
            f"the publication of {owner[0]} under {ctx.storage.storage.root} has no shards "
            f"(.tar, .tar.gz, .tgz) under {cfg.input}: re-run stage {owner[1]!r} with this "
            "storage root")
    return urls
