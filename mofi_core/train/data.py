"""Streaming training batches from webdataset shards, reproducible to the sample.

Each rank reads its share of the shards (``split by node``), each DataLoader worker a share of
that (``split by worker``); samples go through a shuffle buffer, are decoded, transformed and
batched inside the worker, so the main process only moves tensors. Everything random — shard
order, the shuffle buffer, augmentations, the multi-task text choice — is seeded from
``(seed, epoch, rank, worker)`` or from the sample's key, never from process state. That makes
the stream a pure function of its position, and a checkpoint can store that position
(epoch + batches taken from each worker) and resume the exact same stream: the skipped samples
are read but not decoded.

A training set small enough to decode once is not streamed at all: see
:mod:`mofi_core.train.memory` (``train.data_in_memory``).

``resampled=True`` draws shards with replacement forever (the usual choice for multi-node runs on
corpora of uneven shards); its stream is re-seeded at the resume step instead of replayed.
"""

from __future__ import annotations

import io
import json
import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mofi_core.io.s3 import register_webdataset_scheme
from mofi_core.kb.store import KnowledgeBase
from mofi_core.recipes import RecipeSpec

register_webdataset_scheme()  # s3:// shard URLs (train.data) stream through boto3

SampleFn = Callable[[dict[str, Any], int], tuple[torch.Tensor, ...]]
ALT_TEXT = ""  # SampleMaker.text_choice: the sample's own alt-text (entity ids are never empty)


def _seed(*parts: object) -> int:
    return zlib.crc32(":".join(str(p) for p in parts).encode())


def _rng(*parts: object) -> random.Random:
    """A generator seeded by ``parts``: data order and augmentation, not security."""
    return random.Random(_seed(*parts))  # noqa: S311


@dataclass
class ShardStream(IterableDataset):
    """Batches ``(worker id, *tensors)`` for one rank; ``to_sample(sample, seed)`` turns a raw
    webdataset sample into tensors using ``seed`` for anything random."""

    shards: list[str]
    to_sample: SampleFn
    batch_size: int
    shuffle_buffer: int
    seed: int
    rank: int = 0
    world: int = 1
    resampled: bool = False
    epoch: int = 0
    skip: dict[int, int] = field(default_factory=dict)  # worker -> batches already taken
    exclude: frozenset[str] = frozenset()  # keys never trained on (decontam's near-duplicates)

    def __post_init__(self) -> None:
        if not self.shards:
            raise ValueError("no training shards given")
        if not self.resampled and len(self.shards) < self.world:
            raise ValueError(f"{len(self.shards)} shards cannot feed {self.world} ranks: write "
                             "more, smaller shards or set train.resampled: true")
        super().__init__()

    def _my_shards(self, worker: int, workers: int) -> Iterator[str]:
        if self.resampled:
            rng = _rng(self.seed, "resample", self.epoch, self.rank, worker)
            while True:
                yield rng.choice(self.shards)
        order = sorted(self.shards)
        _rng(self.seed, "shards", self.epoch).shuffle(order)
        mine = order[self.rank::self.world][worker::workers]
        if not mine:
            raise ValueError(f"rank {self.rank} worker {worker} got no shard of {len(order)}: "
                             f"lower train.num_workers to at most {len(order) // self.world}")
        yield from mine

    def _shuffled(self, samples: Iterator[dict], worker: int) -> Iterator[dict]:
        rng = _rng(self.seed, "samples", self.epoch, self.rank, worker)
        buf: list[dict] = []
        for s in samples:
            buf.append(s)
            if len(buf) >= self.shuffle_buffer:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        urls = ({"url": u} for u in self._my_shards(worker, workers))
        samples = self._shuffled((s for s in wds.tarfile_samples(urls)
                                  if s["__key__"] not in self.exclude), worker)
        skip = self.skip.get(worker, 0) * self.batch_size
        batch: list[tuple] = []
        for i, s in enumerate(samples):
            if i < skip:
                continue  # resuming: read past what earlier batches used, without decoding
            batch.append(self.to_sample(s, _seed(self.seed, self.epoch, s["__key__"])))
            if len(batch) == self.batch_size:
                yield (worker, *(torch.stack(col) for col in zip(*batch, strict=True)))
                batch = []


class Batches:
    """Endless batches over epochs, tracking the position a checkpoint needs."""

    def __init__(self, stream: ShardStream, num_workers: int) -> None:
        self.stream, self.num_workers = stream, num_workers
        self.epoch, self.taken = 0, {}

    def restore(self, position: dict | None) -> None:
        """Continue from a checkpoint's ``position()`` (``None``: from the start)."""
        if position is None:
            return
        if position["workers"] != self.num_workers:
            raise ValueError(f"the checkpoint was written with train.num_workers="
                             f"{position['workers']}; resume with the same value")
        self.epoch = position["epoch"]
        self.taken = {int(k): v for k, v in position["taken"].items()}

    def position(self) -> dict:
        return {"epoch": self.epoch, "workers": self.num_workers,
                "taken": {str(k): v for k, v in sorted(self.taken.items())}}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            self.stream.epoch, self.stream.skip = self.epoch, dict(self.taken)
            loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                                persistent_workers=False,
                                prefetch_factor=4 if self.num_workers else None)
            got = False
            for worker, *tensors in loader:
                got = True
                self.taken[int(worker)] = self.taken.get(int(worker), 0) + 1
                yield tuple(tensors)
            if not got and not self.taken:
                raise RuntimeError("training data yielded no batch: fewer samples per rank "
                                   f"than train.batch_size ({self.stream.batch_size})?")
            self.epoch, self.taken = self.epoch + 1, {}


def decode_image(sample: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(sample["jpg"])).convert("RGB")


def seeded(transform: Callable[[Image.Image], torch.Tensor]):
    """``transform`` with torch's RNG seeded per call (augmentations replayable on resume),
    leaving the caller's RNG state untouched."""
    def apply(img: Image.Image, seed: int) -> torch.Tensor:
        # the CPU generator alone: torch.manual_seed would also queue lazy CUDA seeding,
        # which records a stack trace per call (a third of the input pipeline's time)
        gen = torch.default_generator
        saved = gen.get_state()
        gen.manual_seed(seed)
        try:
            return transform(img)
        finally:
            gen.set_state(saved)
    return apply


def labels_of(sample: dict[str, Any]) -> dict[str, Any]:
    raw = sample["json"]
    return json.loads(raw) if isinstance(raw, bytes | str) else raw


def sparse_target(entity_ids: list[str], scores: list[float], class_index: dict[str, int],
                  max_labels: int, weighting: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft multi-label target as (class indices padded with -1, weights summing to 1).
    ``weighting``: ``uniform`` over the image's labels, ``score`` (proportional to the CLIP
    score, shifted to be positive), or ``top`` (only the best-scoring label)."""
    pairs = sorted(((s, class_index[e]) for e, s in zip(entity_ids, scores, strict=True)
                    if e in class_index), reverse=True)[:max_labels]
    if not pairs:
        raise ValueError(f"sample has no label in the class vocabulary: {entity_ids}")
    if weighting == "top":
        pairs = pairs[:1]
    if weighting == "score":
        w = torch.tensor([max(s, 0.0) + 1e-3 for s, _ in pairs])
    else:
        w = torch.ones(len(pairs))
    idx = torch.full((max_labels,), -1, dtype=torch.long)
    weights = torch.zeros(max_labels)
    idx[: len(pairs)] = torch.tensor([c for _, c in pairs])
    weights[: len(pairs)] = w / w.sum()
    return idx, weights


class EntityTexts:
    """Tokens of each entity's text (``{name}`` or ``{name}. {description}``), cached: an
    entity appears in many samples but is tokenized once per worker."""

    def __init__(self, kb: KnowledgeBase, tokenizer, template: str) -> None:
        self.kb, self.tokenizer, self.template = kb, tokenizer, template
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, entity_id: str) -> torch.Tensor:
        if entity_id not in self._cache:
            e = self.kb.get(entity_id)
            if e is None:
                raise ValueError(f"entity {entity_id!r} of the I2E data is not in the KB: the "
                                 "KB changed since build ran; re-run build")
            text = self.template.format(name=e.name, description=e.description or e.name)
            self._cache[entity_id] = self.tokenizer([text])[0]
        return self._cache[entity_id]


@dataclass
class SampleMaker:
    """Raw sample -> tensors for one recipe (picklable: it travels to DataLoader workers)."""

    spec: RecipeSpec  # the recipe's row: what a batch holds and where its text comes from
    transform: Callable[[Image.Image], torch.Tensor]
    tokenizer: Any = None
    class_index: dict[str, int] | None = None
    entity_texts: EntityTexts | None = None
    max_labels: int = 8
    weighting: str = "uniform"
    text_source: str = "entity"  # multitask: entity | alt_text | mix
    alt_text_prob: float = 0.5

    def __call__(self, sample: dict[str, Any], seed: int) -> tuple[torch.Tensor, ...]:
        """The batch row in the order of ``spec.batch``: the image, then the soft target when
        the recipe trains over the vocabulary, then the text tokens when it has a text side."""
        out = [seeded(self.transform)(decode_image(sample), seed)]
        labels = labels_of(sample) if self.spec.data == "i2e" else None
        out.extend(self.targets(labels))
        choice = self.text_choice(labels, seed)
        if choice is not None:
            out.append(self._alt_text(sample) if choice == ALT_TEXT else self.entity_texts(choice))
        return tuple(out)

    def targets(self, labels: dict[str, Any] | None) -> tuple[torch.Tensor, ...]:
        """The soft target (class indices, weights) when the recipe trains over the vocabulary,
        else nothing; the same for a sample in every epoch."""
        if not self.spec.vocab:
            return ()
        return sparse_target(labels["entity_ids"], labels["scores"], self.class_index,
                             self.max_labels, self.weighting)

    def text_choice(self, labels: dict[str, Any] | None, seed: int) -> str | None:
        """Which text the sample pairs with under ``seed``: ``None`` (the recipe has no text
        side), :data:`ALT_TEXT` (its alt-text) or the id of the entity whose text it is."""
        source = self.spec.text_from(self.text_source)
        if not source:
            return None
        if source == "alt_text" or (
                source == "mix" and _rng(seed, "text").random() < self.alt_text_prob):
            return ALT_TEXT
        ents = labels["entity_ids"]
        return ents[_rng(seed, "entity").randrange(len(ents))]

    def _alt_text(self, sample: dict[str, Any]) -> torch.Tensor:
        raw = sample.get("txt", b"")
        return self.tokenizer([raw.decode("utf-8") if isinstance(raw, bytes) else raw])[0]
