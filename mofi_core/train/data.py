"""Streaming training data from webdataset shards.

Shards are split across nodes and DataLoader workers, shuffled at shard and sample level, decoded
and transformed in the workers; batches are formed in the workers too (``batched``) so the main
process only moves tensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import webdataset as wds


def _pipeline(shards: list[Path], batch_size: int, shuffle_buffer: int, seed: int,
              to_sample: Callable[[dict], tuple]) -> wds.WebDataset:
    urls = [str(p) for p in shards]
    return (wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, empty_check=False,
                           nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker)
            .shuffle(shuffle_buffer, seed=seed)
            .decode("pilrgb")
            .map(to_sample)
            .batched(batch_size, partial=False))


def loader(dataset: wds.WebDataset, num_workers: int) -> wds.WebLoader:
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers,
                         persistent_workers=num_workers > 0)


def clip_dataset(shards: list[Path], transform, tokenizer, batch_size: int, shuffle_buffer: int,
                 seed: int) -> wds.WebDataset:
    """(image, tokens of the raw alt-text): the paper's control."""
    def to_sample(s: dict) -> tuple:
        return transform(s["jpg"]), tokenizer([s["txt"]])[0]

    return _pipeline(shards, batch_size, shuffle_buffer, seed, to_sample)


def soft_target(entity_ids: list[str], class_index: dict[str, int]) -> torch.Tensor:
    """Uniform soft multi-label target over the image's entities that are in the vocabulary."""
    target = torch.zeros(len(class_index))
    idx = [class_index[e] for e in entity_ids if e in class_index]
    if not idx:
        raise ValueError(f"sample has no label in the class vocabulary: {entity_ids}")
    target[idx] = 1.0 / len(idx)
    return target


def supervised_dataset(shards: list[Path], transform, class_index: dict[str, int],
                       batch_size: int, shuffle_buffer: int, seed: int) -> wds.WebDataset:
    """(image, soft target over the entity vocabulary) from I2E shards."""
    def to_sample(s: dict) -> tuple:
        labels = s["json"] if isinstance(s["json"], dict) else json.loads(s["json"])
        return transform(s["jpg"]), soft_target(labels["entity_ids"], class_index)

    return _pipeline(shards, batch_size, shuffle_buffer, seed, to_sample)
