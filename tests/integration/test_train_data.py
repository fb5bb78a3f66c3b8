"""The training stream: shards split by rank (node) and worker, resampled mode."""

from __future__ import annotations

import itertools

import torch

from mofi_core.io.shards import list_shards
from mofi_core.train.data import Batches, ShardStream


def _keys_stream(shards, rank=0, world=1, resampled=False, seed=0):
    """A stream whose 'tensor' is the sample key's number, to see which samples a rank gets."""
    def key_only(sample, _seed):
        return (torch.tensor(int(sample["__key__"])),)
    return ShardStream([str(p) for p in shards], key_only, batch_size=1, shuffle_buffer=10,
                       seed=seed, rank=rank, world=world, resampled=resampled)


def _epoch_keys(stream) -> list[int]:
    stream.epoch = 0
    return [int(t.item()) for _, t in stream]


def test_ranks_read_disjoint_shards_that_cover_the_epoch(truth_i2e):
    _, _, i2e = truth_i2e
    shards = list_shards(i2e / "shards")
    assert len(shards) >= 2
    alone = _epoch_keys(_keys_stream(shards))
    r0 = _epoch_keys(_keys_stream(shards, rank=0, world=2))
    r1 = _epoch_keys(_keys_stream(shards, rank=1, world=2))
    assert r0 and r1 and not set(r0) & set(r1)
    assert sorted(r0 + r1) == sorted(alone)
    again = _epoch_keys(_keys_stream(shards))
    assert again == alone  # same seed, same epoch: same order
    other = _keys_stream(shards)
    other.epoch = 1
    assert [int(t.item()) for _, t in other] != alone  # a new epoch reshuffles


def test_resampled_stream_is_endless_and_differs_by_rank(truth_i2e):
    _, _, i2e = truth_i2e
    shards = list_shards(i2e / "shards")[:1]  # one shard can feed any number of ranks
    n = sum(1 for _ in _keys_stream(shards))
    streams = [Batches(_keys_stream(shards, rank=r, world=2, resampled=True), 0)
               for r in (0, 1)]
    taken = [[int(b[0].item()) for b in itertools.islice(iter(s), 3 * n)] for s in streams]
    assert all(len(t) == 3 * n for t in taken)  # more than the data: drawn again
    assert taken[0] != taken[1]
