"""Training data held in memory: decode once, then every batch straight from tensors.

A small training set (the demo's ~6k images of 64 px are 70 MB decoded) costs more to stream
than to train on: the DataLoader worker decodes, augments (PIL) and tokenizes every sample again
each epoch, and on a small CPU host it competes with the forward/backward for the cores. Here
each image is decoded once into one uint8 tensor, targets and texts are computed once, and each
batch is drawn in the main process from a seeded per-epoch permutation and augmented batched on
tensors: the random resized crop + normalisation of open_clip's train transform (its parameters
are read from that transform; a transform with anything else is not supported here and the data
is streamed instead).

Everything random is seeded, never taken from process state: the epoch's permutation by
``(seed, epoch)``, a sample's crop and text choice by the stream's per-sample seed
``(seed, epoch, key)``. The position ``{epoch, taken}`` (batches taken in that epoch) therefore
resumes the exact batches of an uninterrupted run. Each rank takes a disjoint share of every
epoch's permutation, the same number of batches on every rank.

The in-memory order is not the stream's order, so which loader ran is part of a result:
``train.data_in_memory`` is a result key (``auto`` resolves from the data alone, see
:func:`choose`).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from mofi_core.io import s3
from mofi_core.io.shards import iter_samples
from mofi_core.train.data import ALT_TEXT, SampleMaker, _seed, decode_image, labels_of

AUTO_LIMIT_BYTES = 2 * 2**30  # data_in_memory=auto: the decoded images must fit in this
POSITION_KIND = "memory"


@dataclass(frozen=True)
class TensorAugment:
    """A batched random resized crop (area share ``scale``, aspect ``ratio``) to ``size`` and
    the normalisation, on uint8 images — torchvision's RandomResizedCrop family on tensors."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mode: str = "bicubic"

    @classmethod
    def from_transform(cls, transform: Any) -> TensorAugment | None:
        """The tensor equivalent of a train ``transform`` made of a RandomResizedCrop, mode
        conversion, to-tensor and Normalize (open_clip's default); ``None`` for anything else."""
        from torchvision import transforms as T

        crop = norm = None
        for step in getattr(transform, "transforms", [transform]):
            if isinstance(step, T.RandomResizedCrop):
                crop = step
            elif isinstance(step, T.Normalize):
                norm = step
            elif type(step).__name__ not in ("MaybeConvertMode", "MaybeToTensor", "ToTensor",
                                             "_convert_to_rgb"):
                return None
        if crop is None or norm is None or crop.size[0] != crop.size[1]:
            return None
        mode = {"bicubic": "bicubic", "bilinear": "bilinear"}.get(crop.interpolation.value)
        if mode is None or len(norm.mean) != 3:
            return None
        return cls(int(crop.size[0]), tuple(crop.scale), tuple(crop.ratio),
                   tuple(float(m) for m in norm.mean), tuple(float(s) for s in norm.std), mode)

    def box(self, rng: random.Random, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop, drawn as torchvision's RandomResizedCrop
        draws it (10 tries, then the whole image at the nearest allowed aspect)."""
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        aspect = width / height
        if aspect < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif aspect > max(self.ratio):
            h, w = height, round(height * max(self.ratio))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def weights(self, start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
        """(B, out, size) interpolation matrices along one axis: output pixel ``u`` of sample
        ``b`` mixes input pixels ``[start, start + length)`` with PIL's kernel (bicubic a=-0.5
        or triangle), widened when shrinking (antialiasing) and renormalised at the crop edges —
        what cropping and then resizing with PIL computes."""
        step = length / self.size  # input pixels per output pixel
        widen = step.clamp(min=1.0)
        centre = start[:, None] + (torch.arange(self.size) + 0.5) * step[:, None]  # (B, out)
        x = torch.arange(size) + 0.5
        d = ((x[None, None, :] - centre[:, :, None]) / widen[:, None, None]).abs()
        if self.mode == "bicubic":
            a = -0.5
            w = torch.where(d < 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                            torch.where(d < 2, (((d - 5) * d + 8) * d - 4) * a,
                                        torch.zeros(())))
        else:
            w = (1 - d).clamp(min=0)
        inside = (x[None, :] >= start[:, None]) & (x[None, :] < (start + length)[:, None])
        w = w * inside[:, None, :]
        return w / w.sum(-1, keepdim=True)

    def _axis(self, start: int, length: int, size: int, transposed: bool = False
              ) -> torch.Tensor:
        """One (out, size) matrix of :meth:`weights` (or its contiguous transpose), cached:
        crops of a set of equal-sized images take only a few hundred distinct (start, length)
        pairs per axis."""
        cache = self.__dict__.setdefault("_cache", {})
        key = (start, length, size, transposed)
        got = cache.get(key)
        if got is None:
            if len(cache) >= max(256, 2**26 // (4 * self.size * size)):  # <= ~64 MB
                cache.clear()
            got = self.weights(torch.tensor([float(start)]), torch.tensor([float(length)]),
                               size)[0]
            got = cache[key] = got.t().contiguous() if transposed else got
        return got

    def __call__(self, images: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]]
                 ) -> torch.Tensor:
        """``images`` (B, H, 3, W) uint8 — rows of interleaved channels, each image top-left
        aligned and edge-padded — and one box ``(top, left, height, width)`` per image ->
        (B, 3, size, size) float, normalised. Two batched matrix products (rows, then
        columns): the layout lets both run without copying the batch in between."""
        n, height, _, width = images.shape
        top, left, h, w = zip(*boxes, strict=True) if boxes else ((),) * 4
        dev = images.device
        rows = torch.stack([self._axis(a, k, height) for a, k in zip(top, h, strict=True)])
        cols_t = torch.stack([self._axis(a, k, width, transposed=True)
                              for a, k in zip(left, w, strict=True)])  # (B, W, size)
        rows, cols_t = rows.to(dev, non_blocking=True), cols_t.to(dev, non_blocking=True)
        x = torch.bmm(rows, images.view(n, height, 3 * width).float())  # (B, size, 3 W)
        x = torch.bmm(x.view(n, self.size * 3, width), cols_t)  # (B, size 3, size)
        out = torch.empty(n, 3, self.size, self.size, device=dev)
        # bicubic overshoots: clamp to the pixel range (with the copy into the channels-first
        # layout), then (x / 255 - mean) / std
        torch.clamp(x.view(n, self.size, 3, self.size).transpose(1, 2), 0, 255, out=out)
        scale, shift = self._normalise(dev)
        return out.mul_(scale).add_(shift)

    def _normalise(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 / (255 std), -mean / std) per channel, made once per device."""
        key = ("normalise", str(device))
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
            mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
            cache[key] = (1 / (255 * std), -mean / std)
        return cache[key]


@dataclass
class MemorySet:
    """Every training sample decoded: images (N, H, 3, W) uint8 (the layout
    :class:`TensorAugment` wants), each top-left aligned with its true ``sizes`` and
    edge-padded to the largest; the per-sample tensors that never change
    (the soft target); what the text choice needs."""

    keys: list[str]
    images: torch.Tensor
    sizes: list[tuple[int, int]]
    fixed: tuple[torch.Tensor, ...]
    labels: list[dict | None]
    alt_tokens: torch.Tensor | None  # (N, context) when the recipe may use alt-texts

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.images.numel()


def _image_array(sample: dict[str, Any], size: int) -> np.ndarray:
    """The decoded RGB image, its shorter side brought down to ``size`` when larger (the crop
    keeps >= ``scale[0]`` of the area, so nothing finer than that would reach the model)."""
    img = decode_image(sample)
    short = min(img.size)
    if short > size:
        w, h = img.size
        img = img.resize((max(1, round(w * size / short)), max(1, round(h * size / short))),
                         Image.Resampling.BICUBIC)
    return np.array(img)  # writable: torch.from_numpy needs that


def _texts(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else (raw or "")


def _samples(shards: list[str]) -> Iterator[dict[str, Any]]:
    """Every sample of ``shards`` in sorted order: local tars with the project's reader (4x
    webdataset's speed), ``s3://`` ones through webdataset as the stream reads them."""
    for url in sorted(shards):
        if s3.is_s3(url):
            yield from wds.tarfile_samples([{"url": url}])
        else:
            yield from iter_samples(url)


def load(shards: list[str], maker: SampleMaker, augment: TensorAugment,
         limit_bytes: int | None, exclude: frozenset[str] = frozenset()) -> MemorySet | None:
    """Decode all of ``shards`` (in sorted order, local or ``s3://``) but the ``exclude``
    keys; ``None`` as soon as the decoded images pass ``limit_bytes`` (``None``: no limit)."""
    keys, arrays, labels, fixed_rows, alt = [], [], [], [], []
    total = 0
    uses_text = maker.spec.text_from(maker.text_source)
    wants_alt = uses_text in ("alt_text", "mix")
    for sample in _samples(shards):
        if sample["__key__"] in exclude:
            continue
        arr = _image_array(sample, augment.size)
        total += arr.size
        if limit_bytes is not None and total > limit_bytes:
            return None
        keys.append(sample["__key__"])
        arrays.append(arr)
        lab = labels_of(sample) if maker.spec.data == "i2e" else None
        labels.append({"entity_ids": list(lab["entity_ids"])} if lab is not None else None)
        fixed_rows.append(maker.targets(lab))
        if wants_alt:
            alt.append(_texts(sample.get("txt", b"")))
        if uses_text and uses_text != "alt_text" and lab is not None:
            for e in lab["entity_ids"]:
                maker.entity_texts(e)  # tokenized once (and a missing entity fails here)
    if not keys:
        raise ValueError("no training samples in the shards")
    height = max(a.shape[0] for a in arrays)
    width = max(a.shape[1] for a in arrays)
    if limit_bytes is not None and len(arrays) * 3 * height * width > limit_bytes:
        return None
    images = torch.empty(len(arrays), height, 3, width, dtype=torch.uint8)
    sizes = []
    for i, a in enumerate(arrays):
        h, w = a.shape[:2]
        img = images[i]
        img[:h, :, :w] = torch.from_numpy(a).permute(0, 2, 1)
        if w < width:  # edge padding: a crop's interpolation never reads a foreign value
            img[:h, :, w:] = img[:h, :, w - 1:w]
        if h < height:
            img[h:] = img[h - 1:h]
        sizes.append((h, w))
    fixed = tuple(torch.stack(col) for col in zip(*fixed_rows, strict=True)) \
        if fixed_rows and fixed_rows[0] else ()
    alt_tokens = None
    if wants_alt:
        alt_tokens = torch.cat([maker.tokenizer(alt[i:i + 1024])
                                for i in range(0, len(alt), 1024)])
    return MemorySet(keys, images, sizes, fixed, labels, alt_tokens)


def choose(setting: bool | str, data: str, shards: list[str], maker: SampleMaker,
           resampled: bool = False) -> tuple[TensorAugment | None, str]:
    """Whether the data may be held in memory: (its tensor augmentation, "") or (None, why
    not). ``setting`` (``train.data_in_memory``): ``True`` (unless the train transform has no
    tensor equivalent: an error), ``False``, or ``"auto"``: local shards, not resampled, at
    most :data:`AUTO_LIMIT_BYTES` on disk — and :func:`load` then also stops at that many
    decoded bytes. ``auto`` depends on the data and params alone, never on the machine, so a
    result and its checkpoints never depend on where it ran."""
    if setting is False:
        return None, "train.data_in_memory is false"
    augment = TensorAugment.from_transform(maker.transform)
    if augment is None:
        why = "the train transform is not a random resized crop + normalise"
        if setting is True:
            raise ValueError(f"train.data_in_memory=true: {why}; set it to auto or false")
        return None, why
    if setting == "auto":
        if resampled:
            return None, "train.resampled draws shards from the stream"
        if s3.is_s3(data) or any(s3.is_s3(u) for u in shards):
            return None, "remote data is streamed"
        if sum(Path(u).stat().st_size for u in shards) > AUTO_LIMIT_BYTES:
            return None, f"shards larger than {AUTO_LIMIT_BYTES / 2**30:g} GiB"
    return augment, ""


@contextlib.contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """One torch thread for the batch's small CPU ops: on a busy host a team of threads waits
    for its slowest member at every op (3-10x slower than one thread when another process
    holds a core); the training step gets its threads back right after."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class MemoryBatches:
    """Endless batches over epochs from a :class:`MemorySet`, with the loop's data interface
    (``restore``, ``position``, iteration) — see the module's docstring."""

    def __init__(self, data: MemorySet, maker: SampleMaker, augment: TensorAugment,
                 batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu") -> None:
        self.data, self.maker, self.augment = data, maker, augment
        self.device = torch.device(device)  # where the augmentation runs (the training device)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.per_epoch = len(data) // world // batch_size
        if self.per_epoch == 0:
            raise RuntimeError(f"{len(data)} training samples cannot fill one batch of "
                               f"train.batch_size={batch_size} on each of {world} process(es)")
        self.epoch, self.taken = 0, 0

    def restore(self, position: dict | None) -> None:
        """Continue from a checkpoint's ``position()`` (``None``: from the start)."""
        if position is None:
            return
        if position.get("kind") != POSITION_KIND:
            raise ValueError("the checkpoint was written by the streaming loader; resume with "
                             "train.data_in_memory=false")
        self.epoch, self.taken = position["epoch"], position["taken"]

    def position(self) -> dict:
        return {"kind": POSITION_KIND, "epoch": self.epoch, "taken": self.taken}

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's samples of ``epoch``, in batch order (whole batches only)."""
        gen = torch.Generator().manual_seed(_seed(self.seed, "memory", epoch))
        perm = torch.randperm(len(self.data), generator=gen)
        used = self.per_epoch * self.batch_size
        return perm[: used * self.world][self.rank::self.world]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            order = self.order(self.epoch)
            while self.taken < self.per_epoch:
                idx = order[self.taken * self.batch_size:(self.taken + 1) * self.batch_size]
                self.taken += 1
                yield self.batch(self.epoch, idx)
            self.epoch, self.taken = self.epoch + 1, 0

    def batch(self, epoch: int, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The samples ``idx`` as the recipe's batch (images on :attr:`device`)."""
        d = self.data
        rows = idx.tolist()
        seeds = [_seed(self.seed, epoch, d.keys[i]) for i in rows]
        boxes = [self.augment.box(random.Random(_seed(s, "crop")), *d.sizes[i])  # noqa: S311
                 for i, s in zip(rows, seeds, strict=True)]
        with _single_thread(self.device):  # index_select: ~15x faster than d.images[idx]
            images = self.augment(d.images.index_select(0, idx).to(self.device,
                                                                   non_blocking=True), boxes)
            out = [images, *(col.index_select(0, idx) for col in d.fixed)]
        texts = [self._text(i, s) for i, s in zip(rows, seeds, strict=True)]
        if texts and texts[0] is not None:
            out.append(torch.stack(texts))
        return tuple(out)

    def _text(self, i: int, seed: int) -> torch.Tensor | None:
        choice = self.maker.text_choice(self.data.labels[i], seed)
        if choice is None:
            return None
        if choice == ALT_TEXT:
            return self.data.alt_tokens[i]
        return self.maker.entity_texts(choice)
