"""score: CLIP similarity of each (image, candidate entity). Scores only; ``build`` decides.

Entity text embeddings are computed once per entity (never per image); images are decoded and
preprocessed in DataLoader workers while the main process runs the image tower.
"""

from __future__ import annotations

import io
import os
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mofi_core.config import ScoreConfig
from mofi_core.io import tables
from mofi_core.io.atomic import atomic_dir
from mofi_core.io.shards import iter_samples, list_shards
from mofi_core.kb import KnowledgeBase
from mofi_core.models.artifact import image_transform, load_model
from mofi_core.models.factory import tokenizer_for
from mofi_core.train.loop import resolve_device


class ShardImages(IterableDataset):
    """(key, preprocessed image) for the wanted keys; shards are split across workers."""

    def __init__(self, shards: list[Path], keys: set[str], transform) -> None:
        self.shards, self.keys, self.transform = shards, keys, transform

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        info = get_worker_info()
        mine = self.shards if info is None else self.shards[info.id::info.num_workers]
        for shard in mine:
            for s in iter_samples(shard):
                if s["__key__"] in self.keys:
                    img = Image.open(io.BytesIO(s["jpg"])).convert("RGB")
                    yield s["__key__"], self.transform(img)


def load_scorer(cfg: ScoreConfig, baseline_dir: Path):
    """(clip model, image transform, tokenizer) for ``score.model``."""
    if cfg.model == "baseline":
        model, meta = load_model(baseline_dir)
        if meta.kind != "clip":
            raise ValueError(f"{baseline_dir} holds a {meta.kind!r} model; scoring needs a CLIP")
        return model, image_transform(meta), tokenizer_for(meta.arch_config)
    return _load_open_clip(cfg)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def check_pretrained(model: str, pretrained: str | None) -> None:
    """Fail before loading anything if the weights cannot be had without the network."""
    import open_clip

    if not pretrained:
        raise ValueError(f"score.model={model!r} without score.pretrained would score with "
                         "random weights; set score.pretrained to a tag or a checkpoint file")
    if Path(pretrained).is_file():
        return
    tag = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag:
        raise ValueError(f"score.pretrained={pretrained!r} is neither a file nor an open_clip tag "
                         f"of {model!r} (tags: {open_clip.list_pretrained_tags_by_model(model)})")
    if _offline() and not tag.get("hf_hub"):
        # open_clip would fetch this one from a URL: never do that silently in offline mode
        raise RuntimeError(f"open_clip tag {model}/{pretrained} is only downloadable from a URL "
                           "and HF_HUB_OFFLINE is set: download the checkpoint where there is "
                           "network and set score.pretrained to the file")


def _load_open_clip(cfg: ScoreConfig):
    import open_clip

    check_pretrained(cfg.model, cfg.pretrained)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.model, pretrained=cfg.pretrained)
    except Exception as err:  # open_clip raises RuntimeError/OSError/hub errors alike
        raise RuntimeError(
            f"could not load open_clip {cfg.model!r} with pretrained={cfg.pretrained!r}: {err}. "
            "Offline, only checkpoint files on disk (or tags already in the local Hugging Face "
            "cache) work: download the weights where there is network and set score.pretrained "
            "to the file.") from err
    return model.eval(), preprocess, open_clip.get_tokenizer(cfg.model)


@torch.no_grad()
def entity_text_embeddings(model, tokenizer, kb: KnowledgeBase, entity_ids: list[str],
                           prompts: tuple[str, ...], device: torch.device, batch: int = 256
                           ) -> torch.Tensor:
    """One unit vector per entity: the normalised mean over the prompt templates (which may use
    ``{name}`` and ``{description}``). Computed once per entity, never per image."""
    out = []
    for i in range(0, len(entity_ids), batch):
        ents = [kb.entities[e] for e in entity_ids[i:i + batch]]
        per_prompt = [model.encode_text(tokenizer([p.format(name=e.name, description=e.description)
                                                   for e in ents]).to(device), normalize=True)
                      for p in prompts]
        out.append(torch.nn.functional.normalize(torch.stack(per_prompt).mean(0), dim=-1))
    return torch.cat(out).float()


def candidates_by_key(mentions: pa.Table) -> dict[str, list[str]]:
    cands: dict[str, list[str]] = defaultdict(list)
    for key, ent in zip(mentions["key"].to_pylist(), mentions["entity_id"].to_pylist(),
                        strict=True):
        if ent is not None and ent not in cands[key]:
            cands[key].append(ent)
    return dict(cands)


def null_pool(kb: KnowledgeBase, cfg: ScoreConfig) -> list[str]:
    """Entities the null distribution is drawn from: a fixed random sample of the KB."""
    if cfg.null_samples == 0:
        return []
    ids = sorted(kb.entities)
    rng = np.random.default_rng(cfg.seed)
    return sorted(rng.choice(ids, min(cfg.null_pool, len(ids)), replace=False).tolist())


def null_draw(key: str, pool: np.ndarray, exclude: set[int], n: int, seed: int) -> np.ndarray:
    """``n`` pool indices not among the image's candidates, seeded by the key alone (the same
    draw whatever the batch order or number of workers)."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    picks = rng.permutation(pool)[: n + len(exclude)]
    return np.array([i for i in picks if i not in exclude][:n], dtype=np.int64)


@dataclass
class ScoreRows:
    key: list[str] = field(default_factory=list)
    entity: list[str] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    null_key: list[str] = field(default_factory=list)
    null_scores: list[list[float]] = field(default_factory=list)


@torch.no_grad()
def score(ingest_dir: Path, mentions_file: Path, kb_path: Path, baseline_dir: Path,
          out_dir: Path, cfg: ScoreConfig, num_workers: int = 1) -> dict[str, float]:
    """Write ``scores.parquet`` (key, entity_id, score) and ``null.parquet`` (key, scores of
    the image against random non-candidate entities) into ``out_dir``."""
    device = resolve_device(cfg.device)
    model, transform, tokenizer = load_scorer(cfg, baseline_dir)
    model = model.to(device)
    kb = KnowledgeBase.load(kb_path)
    cands = candidates_by_key(tables.read_table(mentions_file, tables.MENTIONS))
    missing = sorted({e for es in cands.values() for e in es if e not in kb.entities})
    if missing:
        raise ValueError(f"{mentions_file} links to entities not in {kb_path}: {missing[:5]}")
    pool = null_pool(kb, cfg)
    entity_ids = sorted({e for es in cands.values() for e in es} | set(pool))
    index = {e: i for i, e in enumerate(entity_ids)}
    pool_idx = np.array([index[e] for e in pool], dtype=np.int64)
    text = entity_text_embeddings(model, tokenizer, kb, entity_ids, cfg.prompts, device)
    loader = DataLoader(ShardImages(list_shards(ingest_dir / "shards"), set(cands), transform),
                        batch_size=cfg.batch_size, num_workers=num_workers)
    rows = ScoreRows()
    for keys, images in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            img = model.encode_image(images.to(device), normalize=True).float()
        for key, emb in zip(keys, img, strict=True):
            idx = [index[e] for e in cands[key]]
            rows.key.extend([key] * len(idx))
            rows.entity.extend(cands[key])
            rows.score.extend((text[idx] @ emb).cpu().tolist())
            if len(pool_idx):
                nulls = null_draw(key, pool_idx, set(idx), cfg.null_samples, cfg.seed)
                rows.null_key.append(key)
                rows.null_scores.append((text[nulls] @ emb).cpu().tolist())
    _write(rows, cands, mentions_file, ingest_dir, out_dir)
    return _metrics(rows, len(index))


def _write(rows: ScoreRows, cands: dict, mentions_file: Path, ingest_dir: Path,
           out_dir: Path) -> None:
    unseen = set(cands) - set(rows.key)
    if unseen:
        raise ValueError(f"{len(unseen)} keys in {mentions_file} have no image in "
                         f"{ingest_dir / 'shards'} (e.g. {sorted(unseen)[:3]}): ner and ingest "
                         "outputs are out of sync; re-run both")
    with atomic_dir(out_dir) as tmp:
        tables.write_table(tmp / "scores.parquet", pa.table({
            "key": rows.key, "entity_id": rows.entity,
            "score": pa.array(rows.score, pa.float32())}), tables.SCORES)
        tables.write_table(tmp / "null.parquet", pa.table({
            "key": rows.null_key,
            "scores": pa.array(rows.null_scores, pa.list_(pa.float32()))}), tables.NULL_SCORES)


def _metrics(rows: ScoreRows, entities: int) -> dict[str, float]:
    scores = np.asarray(rows.score, dtype=np.float32)
    null = np.concatenate([np.asarray(s, np.float32) for s in rows.null_scores]) \
        if rows.null_scores else np.zeros(0, np.float32)
    out = {"pairs_scored": len(scores), "images_scored": len(set(rows.key)),
           "entities_embedded": entities}
    for name, values in (("score", scores), ("null", null)):
        if len(values):
            out.update({f"{name}_mean": float(values.mean()),
                        f"{name}_p10": float(np.percentile(values, 10)),
                        f"{name}_p90": float(np.percentile(values, 90))})
    return out


def run(cfg: ScoreConfig, ctx) -> dict:
    """Stage ``score``: CLIP similarity per (image, candidate entity)."""
    lay = ctx.layout
    return score(lay.ingest, lay.ner / "mentions.parquet", lay.kb, lay.baseline_model,
                 lay.score, cfg)
