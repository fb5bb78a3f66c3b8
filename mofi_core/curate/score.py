"""score: CLIP similarity of each (image, candidate entity). Scores only; ``build`` decides.

Entity text embeddings are computed once per entity (never per image) and kept in the output
(:mod:`mofi_core.curate.entity_embeddings`: a re-run embeds only entities it has not seen, a
cluster worker memory-maps them); images are decoded and preprocessed in DataLoader workers
while the main process runs the image tower.
"""

from __future__ import annotations

import os
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mofi_core.config.score import ScoreConfig
from mofi_core.curate import entity_embeddings
from mofi_core.device import resolve_device
from mofi_core.io import tables
from mofi_core.io.hashing import file_sha256, fingerprint
from mofi_core.io.shards import iter_samples, list_shards
from mofi_core.kb.store import KnowledgeBase, kb_digest, normalise_alias
from mofi_core.models.artifact import WEIGHTS, LoadedModel, check_model_folder
from mofi_core.models.factory import encode_texts
from mofi_core.models.preprocess import BatchPreprocess
from mofi_core.parallel import (
    ResumeState,
    ShardJob,
    executor_address,
    iter_shards,
    remove_stale,
)
from mofi_core.progress import Progress

if TYPE_CHECKING:
    from mofi_core.context import StageContext


@dataclass(frozen=True)
class ScoreJob:
    name: str
    tar: Path
    mentions: Path


class ShardBatches(IterableDataset):
    """Full batches of (shard, key, decoded image) for the keys that have candidates,
    running across shard boundaries (small shards do not shrink the batches). Each batch also
    names the shards whose last image is in it or in an earlier batch, so the main process can
    write each shard as soon as it is complete. Shards are split across DataLoader workers;
    each yields ``(shard names, keys, images, finished shards)``, the images collated by
    :class:`BatchPreprocess` (the main process normalises them on the model's device)."""

    def __init__(self, jobs: list[ScoreJob], prep: BatchPreprocess, batch_size: int) -> None:
        self.jobs, self.prep, self.batch_size = jobs, prep, batch_size

    def __iter__(self) -> Iterator[tuple[list[str], list[str], torch.Tensor, list[str]]]:
        info = get_worker_info()
        mine = self.jobs if info is None else self.jobs[info.id::info.num_workers]
        names: list[str] = []
        keys: list[str] = []
        images: list[torch.Tensor] = []
        finished: list[str] = []
        for job in mine:
            linked = pq.read_table(job.mentions, columns=["key", "entity_id"])
            wanted = set(linked.filter(pc.is_valid(linked["entity_id"]))["key"].to_pylist())
            for s in iter_samples(job.tar):
                if s["__key__"] not in wanted:
                    continue
                names.append(job.name)
                keys.append(s["__key__"])
                images.append(self.prep.one(s["jpg"]))
                if len(keys) == self.batch_size:
                    yield names, keys, self.prep.collate(images), finished
                    names, keys, images, finished = [], [], [], []
            finished.append(job.name)
        if keys or finished:
            yield names, keys, (self.prep.collate(images) if images else torch.empty(0)), finished


def load_scorer(cfg: ScoreConfig, baseline_dir: Path, device: torch.device | None = None):
    """(clip model on ``device``, image transform, tokenizer) for ``score.model``."""
    device = device or resolve_device(cfg.device)
    if cfg.model == "baseline":
        loaded = LoadedModel.load(baseline_dir, device)
        if loaded.meta.kind != "clip":
            raise ValueError(f"{baseline_dir} holds a {loaded.meta.kind!r} model; scoring needs "
                             "a CLIP")
        return loaded.model, loaded.transform, loaded.tokenizer
    model, transform, tokenizer = _load_open_clip(cfg)
    return model.to(device), transform, tokenizer


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

    from mofi_core.models.pretrained import load_into, read_checkpoint, register_local_configs

    check_pretrained(cfg.model, cfg.pretrained)
    register_local_configs()  # mofi's own architectures (mofi-tiny...) by name too
    if Path(cfg.pretrained).is_file():
        # a local file: built without weights, then filled strictly (names and shapes), read
        # without unpickling; a wrong file is one line naming it
        model, _, preprocess = open_clip.create_model_and_transforms(cfg.model)
        load_into(model, read_checkpoint(cfg.pretrained), cfg.pretrained)
        return model.eval(), preprocess, open_clip.get_tokenizer(cfg.model)
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


def entity_texts(kb: KnowledgeBase, entity_ids: list[str], prompts: tuple[str, ...],
                 homonym_prompts: tuple[str, ...]) -> list[list[str]]:
    """The texts of each entity: ``prompts`` filled with its name (and description); an entity
    whose name another KB entity shares gets ``homonym_prompts`` instead, so that two
    namesakes never have one text (nor one score)."""
    out = []
    for e in (kb.get(i) for i in entity_ids):
        shared = len(kb.form_rows(normalise_alias(e.name))) > 1
        desc = e.description or e.type or e.name
        out.append([p.format(name=e.name, description=desc)
                    for p in (homonym_prompts if shared else prompts)])
    return out


def entity_text_embeddings(model, tokenizer, kb: KnowledgeBase, entity_ids: list[str],
                           prompts: tuple[str, ...], device: torch.device, batch: int = 256,
                           homonym_prompts: tuple[str, ...] | None = None) -> torch.Tensor:
    """One unit vector per entity: the normalised mean of its texts' embeddings
    (:func:`entity_texts`). Computed once per entity, never per image."""
    texts = entity_texts(kb, entity_ids, prompts, homonym_prompts or prompts)
    flat = [t for ts in texts for t in ts]
    emb = encode_texts(model, tokenizer, flat, device, batch) if flat else \
        torch.zeros(0, 1, device=device)
    out, start = [], 0
    for ts in texts:
        out.append(emb[start:start + len(ts)].mean(0))
        start += len(ts)
    if not out:
        return torch.zeros(0, emb.shape[-1], device=device)
    return torch.nn.functional.normalize(torch.stack(out), dim=-1)


def candidates_by_key(mentions: pa.Table) -> dict[str, list[str]]:
    cands: dict[str, list[str]] = defaultdict(list)
    for key, ent in zip(mentions["key"].to_pylist(), mentions["entity_id"].to_pylist(),
                        strict=True):
        if ent is not None and ent not in cands[key]:
            cands[key].append(ent)
    return dict(cands)


def null_pool(kb: KnowledgeBase, cfg: ScoreConfig) -> dict[str, list[str]]:
    """Entities the decoys are drawn from, by KB type: a fixed random sample of at most
    ``score.null_pool`` of each type, drawn from the whole KB (``score.decoys: uniform``: one
    pool of that size, under the type ``""``)."""
    if cfg.null_samples == 0:
        return {}
    rng = np.random.default_rng(cfg.seed)
    ids = kb.table["entity_id"]
    groups = {"": np.arange(len(kb))} if cfg.decoys == "uniform" else {
        str(t): pc.indices_nonzero(pc.equal(kb.table["type"], t)).to_numpy()
        for t in sorted(pc.unique(kb.table["type"]).drop_null().to_pylist())}
    out = {}
    for t, rows in groups.items():
        pick = rng.choice(rows, min(cfg.null_pool, len(rows)), replace=False)
        out[t] = sorted(ids.take(pa.array(np.sort(pick))).to_pylist())
    return out


def null_draw(key: str, pool: np.ndarray, exclude: set[int], n: int, seed: int) -> np.ndarray:
    """``n`` pool indices not among the image's candidates, seeded by the key alone (the same
    draw whatever the batch order or number of workers)."""
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(key.encode())]))
    # draw without replacement only as many as can be needed: O(n), not O(pool)
    picks = pool[rng.choice(len(pool), min(len(pool), n + len(exclude)), replace=False)]
    return np.array([i for i in picks.tolist() if i not in exclude][:n], dtype=np.int64)


@dataclass
class ShardRows:
    """Rows of one shard, written when its last batch has been scored."""

    key: list[str] = field(default_factory=list)
    entity: list[str] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    null_key: list[str] = field(default_factory=list)
    null_scores: list[list[float]] = field(default_factory=list)
    seen: int = 0


def _outputs(out_dir: Path, name: str) -> list[Path]:
    return [out_dir / "parts" / f"{name}.scores.parquet",
            out_dir / "parts" / f"{name}.null.parquet"]


def score_jobs(ingest_dir: Path, ner_dir: Path) -> list[ScoreJob]:
    tars = {p.stem: p for p in list_shards(ingest_dir / "shards")}
    parts = {p.name.split(".", 1)[0]: p for p in (ner_dir / "parts").glob("*.parquet")}
    if set(tars) != set(parts):
        raise ValueError(f"ingest shards {sorted(set(tars) - set(parts))[:3]} have no ner part "
                         f"and ner parts {sorted(set(parts) - set(tars))[:3]} no ingest shard "
                         f"({ingest_dir}, {ner_dir}): the two stages are out of sync; re-run both")
    return [ScoreJob(n, tars[n], parts[n]) for n in sorted(tars)]


def candidate_entities(jobs: list[ScoreJob]) -> set[str]:
    out: set[str] = set()
    for job in jobs:
        col = pq.read_table(job.mentions, columns=["entity_id"])["entity_id"]
        out.update(e for e in col.unique().to_pylist() if e is not None)
    return out


def decode_workers(cfg: ScoreConfig, device: torch.device, override: int | None) -> int:
    if override is not None:
        return override
    if cfg.decode_workers >= 0:
        return cfg.decode_workers
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


@torch.no_grad()
def score(ingest_dir: Path, ner_dir: Path, kb_path: Path, baseline_dir: Path,
          out_dir: Path, cfg: ScoreConfig, num_workers: int | None = None,
          state_dir: Path | None = None) -> dict[str, float]:
    """Per ingest shard, write ``parts/<name>.scores.parquet`` (key, entity_id, score) and
    ``parts/<name>.null.parquet`` (key, scores against random non-candidate entities), then
    concatenate them into ``scores.parquet`` and ``null.parquet``. Memory holds one shard's
    rows and the entity text embeddings, never the corpus. With ``state_dir``, shards already
    scored with the same model, KB and params are skipped."""
    kb = KnowledgeBase.open(kb_path)
    jobs = score_jobs(ingest_dir, ner_dir)
    cand_ids = candidate_entities(jobs)
    missing = sorted(e for e in cand_ids if e not in kb)
    if missing:
        raise ValueError(f"{ner_dir} links to entities not in {kb_path}: {missing[:5]}")
    entity_ids = tuple(sorted(cand_ids | {e for ids in null_pool(kb, cfg).values()
                                           for e in ids}))
    # the entity texts' vectors, once per (KB, scorer, prompts): kept from an earlier run
    # where it made them, embedded here otherwise, read by every process that scores
    texts = out_dir / entity_embeddings.FOLDER
    ident = entity_embeddings.identity(kb_digest(kb_path), _model_identity(cfg, baseline_dir),
                                       cfg.prompts, cfg.homonym_prompts)
    device = resolve_device(cfg.device)
    models: list = []  # the scorer, loaded at most once in this process

    def scorer_model():
        if not models:
            models.append(load_scorer(cfg, baseline_dir, device))
        return models[0]

    def embed(ids: list[str]) -> np.ndarray:
        model, _, tokenizer = scorer_model()
        return entity_text_embeddings(model, tokenizer, kb, ids, cfg.prompts, device,
                                      homonym_prompts=cfg.homonym_prompts).cpu().numpy()

    done = entity_embeddings.update(texts, ident, entity_ids, embed)
    print(f"score: entity embeddings {len(entity_ids)} (embedded {done.embedded}, kept "
          f"{done.reused} from {texts})"
          + (f"; the earlier ones were not used: {done.discarded}" if done.discarded else ""),
          flush=True)

    names = {j.name for j in jobs}
    remove_stale(out_dir / "parts", names)
    state = ResumeState(state_dir, fingerprint(
        "score", cfg.result_key(),
        _model_identity(cfg, baseline_dir), kb_digest(kb_path))) \
        if state_dir is not None else None
    identity = {j.name: f"{file_sha256(j.tar)}:{file_sha256(j.mentions)}" for j in jobs}
    shard_jobs = {j.name: ShardJob(j.name, str(j.tar), identity[j.name]) for j in jobs}
    progress = Progress("score", len(jobs), "shard")
    if executor_address():
        # one job per shard on the cluster; each worker loads the scorer once
        for _, _, was_done in iter_shards(
                partial(score_shard, out_dir=out_dir,
                        mentions={j.name: str(j.mentions) for j in jobs}),
                [shard_jobs[j.name] for j in jobs], lambda j: _outputs(out_dir, j.name), state,
                initializer=_init_scorer,
                initargs=(cfg, str(baseline_dir), str(kb_path), entity_ids, str(texts),
                          ident)):
            progress.advance(resumed=was_done)  # counted as shards come back
        todo = []
    else:
        todo = [j for j in jobs if state is None
                or not state.is_done(shard_jobs[j.name], _outputs(out_dir, j.name))]
        progress.advance(len(jobs) - len(todo), resumed=True)
    if todo:
        sc = Scorer.build(cfg, baseline_dir, kb, entity_ids, texts, ident, scorer_model())
        loader = DataLoader(ShardBatches(todo, sc.prep, cfg.batch_size), batch_size=None,
                            num_workers=min(decode_workers(cfg, sc.device, num_workers),
                                            len(todo)))
        by_name = {j.name: j for j in todo}
        # shards in progress (several when DataLoader workers interleave): rows + candidates
        open_rows: dict[str, ShardRows] = {}
        cands_of: dict[str, dict[str, list[str]]] = {}
        embedded = 0
        for shard_of, keys, images, finished in loader:
            if keys:
                img = sc.embed(images)
                for name in dict.fromkeys(shard_of):  # the shards in this batch, in order
                    if name not in cands_of:
                        cands_of[name] = candidates_by_key(
                            tables.read_table(by_name[name].mentions, tables.MENTIONS))
                    mine = [i for i, n in enumerate(shard_of) if n == name]
                    sc.score_batch(open_rows.setdefault(name, ShardRows()),
                                   [keys[i] for i in mine], img[mine], cands_of[name])
            for name in finished:
                cands = cands_of.pop(name, None)
                if cands is None:  # a shard without any candidate: nothing was scored
                    cands = candidates_by_key(
                        tables.read_table(by_name[name].mentions, tables.MENTIONS))
                _write_shard(out_dir, by_name[name], open_rows.pop(name, ShardRows()), cands)
                if state is not None:
                    state.mark_done(shard_jobs[name], _outputs(out_dir, name), {})
            embedded += len(keys)
            progress.advance(len(finished), images=embedded)  # per batch: lines within shards
    progress.close()
    if state is not None:
        state.forget_others(names)
    parts = [_outputs(out_dir, j.name) for j in jobs]
    tables.concat_parts([p[0] for p in parts], out_dir / "scores.parquet", tables.SCORES)
    tables.concat_parts([p[1] for p in parts], out_dir / "null.parquet", tables.NULL_SCORES)
    return _metrics(out_dir, len(entity_ids))


@dataclass
class Scorer:
    """What scoring needs, built once per process: the CLIP on its device, its batched image
    preprocessing (the model's eval transform, :mod:`mofi_core.models.preprocess`), one text
    embedding per entity (row = position in the entity list, read from the folder
    :mod:`~mofi_core.curate.entity_embeddings` wrote) and the null pool's rows."""

    cfg: ScoreConfig
    device: torch.device
    model: torch.nn.Module
    prep: BatchPreprocess
    text: torch.Tensor
    index: dict[str, int]
    pools: dict[str, np.ndarray]  # decoy pool per KB type ("": every type), as text rows
    types: list[str]  # the KB type of each text row

    @classmethod
    def build(cls, cfg: ScoreConfig, baseline_dir: Path, kb: KnowledgeBase,
              entity_ids: tuple[str, ...], texts: Path, ident: dict,
              loaded: tuple | None = None) -> Scorer:
        """``texts``, ``ident``: the entity embedding folder and the identity it must have;
        ``loaded``: the scorer :func:`load_scorer` gave, when this process has it already."""
        device = resolve_device(cfg.device)
        model, transform, _ = loaded or load_scorer(cfg, baseline_dir, device)
        text = torch.from_numpy(entity_embeddings.load(texts, ident, entity_ids)).to(device)
        index = {e: i for i, e in enumerate(entity_ids)}
        pools = {t: np.array([index[e] for e in ids], dtype=np.int64)
                 for t, ids in null_pool(kb, cfg).items()}
        types = [t or "" for t in kb.column("type", kb.rows(entity_ids))] if entity_ids else []
        return cls(cfg, device, model, BatchPreprocess(transform), text, index, pools, types)

    def decoy_pool(self, candidates: list[int]) -> np.ndarray:
        """Where an image's decoys come from: the pools of its candidates' types (confusers
        are namesakes of the same kind), or the one uniform pool."""
        if "" in self.pools:
            return self.pools[""]
        kinds = sorted({self.types[i] for i in candidates} & set(self.pools))
        if not kinds:
            return np.concatenate(list(self.pools.values())) if self.pools else \
                np.zeros(0, dtype=np.int64)
        return np.concatenate([self.pools[t] for t in kinds])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings (float32) of a collated uint8 batch."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.device.type == "cuda"):
            return self.model.encode_image(self.prep.normalize(images.to(self.device)),
                                           normalize=True).float()

    def score_batch(self, rows: ShardRows, keys: list[str], img: torch.Tensor,
                    cands: dict[str, list[str]]) -> None:
        """All (image, candidate) and (image, null entity) similarities of a batch in two
        gathers."""
        per = [cands[k] for k in keys]
        ent = [[self.index[e] for e in c] for c in per]
        rows.key.extend(k for k, c in zip(keys, per, strict=True) for _ in c)
        rows.entity.extend(e for c in per for e in c)
        rows.score.extend(_pair_scores(img, self.text, ent))
        rows.seen += len(keys)
        if self.pools:
            nulls = [null_draw(k, self.decoy_pool(idx), set(idx), self.cfg.null_samples,
                               self.cfg.seed).tolist()
                     for k, idx in zip(keys, ent, strict=True)]
            flat = _pair_scores(img, self.text, nulls)
            rows.null_key.extend(keys)
            start = 0
            for n in nulls:
                rows.null_scores.append(flat[start:start + len(n)])
                start += len(n)


_WORKER_SCORER: Scorer | None = None  # an executor worker's scorer, built by _init_scorer


def _init_scorer(cfg: ScoreConfig, baseline_dir: str, kb_path: str, entity_ids: tuple[str, ...],
                 texts: str, ident: dict) -> None:
    """Per executor worker: the scorer, built once, its entity vectors memory-mapped from the
    folder the main process wrote."""
    global _WORKER_SCORER
    _WORKER_SCORER = Scorer.build(cfg, Path(baseline_dir), KnowledgeBase.open(Path(kb_path)),
                                  entity_ids, Path(texts), ident)


@torch.no_grad()
def score_shard(job: ShardJob, out_dir: Path, mentions: dict[str, str]
                ) -> tuple[list[Path], dict]:
    """Score one shard on its own (the executor path): batches never span shards, so a score
    may differ from the in-process path's in the last float bits, never more."""
    sc = _WORKER_SCORER
    if sc is None:
        raise RuntimeError("score_shard ran in a worker whose scorer was not built: it must run "
                           "through run_shards with initializer=_init_scorer")
    mentions_file = Path(mentions[job.name])
    cands = candidates_by_key(tables.read_table(mentions_file, tables.MENTIONS))
    rows = ShardRows()
    keys: list[str] = []
    images: list[torch.Tensor] = []

    def flush() -> None:
        sc.score_batch(rows, keys, sc.embed(sc.prep.collate(images)), cands)
        keys.clear()
        images.clear()

    for s in iter_samples(job.source):
        if s["__key__"] in cands:
            keys.append(s["__key__"])
            images.append(sc.prep.one(s["jpg"]))
            if len(keys) == sc.cfg.batch_size:
                flush()
    if keys:
        flush()
    _write_shard(out_dir, ScoreJob(job.name, Path(job.source), mentions_file), rows, cands)
    return _outputs(out_dir, job.name), {}


def _pair_scores(img: torch.Tensor, text: torch.Tensor, per_image: list[list[int]]
                 ) -> list[float]:
    """cosine(image i, entity j) for every j in ``per_image[i]``, flattened in order."""
    counts = torch.tensor([len(p) for p in per_image], device=img.device)
    rows = torch.repeat_interleave(torch.arange(len(per_image), device=img.device), counts)
    cols = torch.tensor([j for p in per_image for j in p], dtype=torch.long, device=img.device)
    return (img[rows] * text[cols]).sum(-1).cpu().tolist()


def _write_shard(out_dir: Path, job: ScoreJob, rows: ShardRows,
                 cands: dict[str, list[str]]) -> None:
    if rows.seen != len(cands):
        unseen = sorted(set(cands) - set(rows.key))
        raise ValueError(f"{len(unseen)} keys in {job.mentions} have no image in {job.tar} "
                         f"(e.g. {unseen[:3]}): ner and ingest outputs are out of sync; re-run "
                         "both")
    scores_out, null_out = _outputs(out_dir, job.name)
    tables.write_table(scores_out, pa.table({
        "key": pa.array(rows.key, pa.string()), "entity_id": pa.array(rows.entity, pa.string()),
        "score": pa.array(rows.score, pa.float32())}), tables.SCORES)
    tables.write_table(null_out, pa.table({
        "key": pa.array(rows.null_key, pa.string()),
        "scores": pa.array(rows.null_scores, pa.list_(pa.float32()))}), tables.NULL_SCORES)


def _model_identity(cfg: ScoreConfig, baseline_dir: Path) -> str:
    if cfg.model == "baseline":
        return file_sha256(baseline_dir / WEIGHTS)
    p = Path(cfg.pretrained or "")
    return file_sha256(p) if p.is_file() else f"{cfg.model}/{cfg.pretrained}"


HIST_BINS = np.linspace(-1.0, 1.0, 4001)


def _metrics(out_dir: Path, entities: int) -> dict[str, float]:
    """Streaming over the parts: counts, means and percentiles (from a 0.0005-wide histogram,
    so memory does not grow with the corpus)."""
    out: dict[str, float] = {"pairs_scored": 0, "images_scored": 0,
                             "entities_embedded": entities}
    for name, suffix, column in (("score", "scores", "score"), ("null", "null", "scores")):
        hist = np.zeros(len(HIST_BINS) - 1, dtype=np.int64)
        total, count = 0.0, 0
        for part in sorted((out_dir / "parts").glob(f"*.{suffix}.parquet")):
            col = pq.read_table(part, columns=[column])[column]
            if name == "null":
                col = col.combine_chunks().flatten() if len(col) else pa.array([], pa.float32())
            values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
            hist += np.histogram(np.clip(values, -1, 1), HIST_BINS)[0]
            total, count = total + float(values.sum()), count + len(values)
            if name == "score":
                out["pairs_scored"] += len(values)
        if count:
            cdf = np.cumsum(hist) / count
            centre = (HIST_BINS[:-1] + HIST_BINS[1:]) / 2
            out.update({f"{name}_mean": total / count,
                        f"{name}_p10": float(centre[np.searchsorted(cdf, 0.10)]),
                        f"{name}_p90": float(centre[np.searchsorted(cdf, 0.90)])})
    out["images_scored"] = sum(
        pc.count_distinct(pq.read_table(p, columns=["key"])["key"]).as_py()
        for p in (out_dir / "parts").glob("*.scores.parquet"))
    return out


def check(cfg: ScoreConfig, ctx: StageContext) -> None:
    """Before any image is read: the KB is well-formed and the scorer can be had."""
    KnowledgeBase.open(ctx.layout.kb)
    if cfg.model == "baseline":
        meta = check_model_folder(ctx.layout.baseline_model,
                                  f"score.model: baseline ({ctx.layout.baseline_model})")
        if meta.kind != "clip":
            raise ValueError(f"{ctx.layout.baseline_model} holds a {meta.kind!r} model; "
                             "scoring needs a CLIP")
    else:
        check_pretrained(cfg.model, cfg.pretrained)


def run(cfg: ScoreConfig, ctx: StageContext) -> dict:
    """Stage ``score``: CLIP similarity per (image, candidate entity)."""
    lay = ctx.layout
    return score(lay.ingest, lay.ner, lay.kb, lay.baseline_model, lay.score, cfg,
                 state_dir=lay.state("score"))
