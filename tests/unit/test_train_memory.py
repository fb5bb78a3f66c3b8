"""Training data held in memory: exact resume, seeded order and augmentation, disjoint rank
shares, the tensor augmentation against PIL's, and when ``data_in_memory=auto`` holds it."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from mofi_core.config.train import TrainConfig
from mofi_core.kb.store import KBEntity, KnowledgeBase
from mofi_core.models.artifact import image_transform
from mofi_core.models.factory import tokenizer_for
from mofi_core.train import memory
from mofi_core.train.data import ALT_TEXT, EntityTexts, SampleMaker, _seed
from mofi_core.train.run import _model_meta

ENTITIES = [f"Q{i}" for i in range(6)]
KB = KnowledgeBase([KBEntity(e, f"thing {e}", (), f"a thing called {e}", "LOC")
                    for e in ENTITIES])


def _jpeg(rng: random.Random, size: tuple[int, int]) -> bytes:
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(6):  # some structure, so that crops differ
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 9, y + 9))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _shards(folder: Path, n: int = 40, per_shard: int = 15,
            sizes: tuple[tuple[int, int], ...] = ((64, 64),)) -> list[str]:
    """I2E-like shards (jpg + json labels + txt) of ``n`` samples."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(0, n, per_shard):
        path = folder / f"{s // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s, min(n, s + per_shard)):
                ents = rng.sample(ENTITIES, rng.randint(1, 3))
                labels = {"entity_ids": ents, "scores": [rng.random() for _ in ents]}
                for ext, data in (("jpg", _jpeg(rng, sizes[i % len(sizes)])),
                                  ("json", json.dumps(labels).encode()),
                                  ("txt", f"alt text of sample {i}".encode())):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def _maker(recipe: str = "multitask", text_source: str = "mix", transform=None
           ) -> SampleMaker:
    cfg = TrainConfig(recipe=recipe, steps=2, warmup_steps=1, text_source=text_source)
    meta = _model_meta(cfg, ENTITIES if cfg.spec.vocab else [])
    tok = tokenizer_for(meta.arch_config)
    return SampleMaker(spec=cfg.spec, transform=transform or image_transform(meta, train=True),
                       tokenizer=tok, class_index={c: i for i, c in enumerate(ENTITIES)},
                       entity_texts=EntityTexts(KB, tok, "{name}. {description}"),
                       text_source=text_source)


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    shards = _shards(tmp_path_factory.mktemp("shards"))
    maker = _maker()
    augment, why = memory.choose("auto", str(Path(shards[0]).parent), shards, maker)
    assert augment is not None, why
    return memory.load(shards, maker, augment, memory.AUTO_LIMIT_BYTES), maker, augment


def _batches(held, **kw) -> memory.MemoryBatches:
    data, maker, augment = held
    return memory.MemoryBatches(data, maker, augment, **{"batch_size": 8, "seed": 0, **kw})


def _take(it, n: int) -> list[tuple[torch.Tensor, ...]]:
    return [next(it) for _ in range(n)]


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True))


def test_resume_from_a_position_gives_the_uninterrupted_batches(held):
    """5 batches an epoch: resuming mid-epoch and at an epoch's end replays exactly."""
    ref = _batches(held)
    assert ref.per_epoch == 5
    want = _take(iter(ref), 13)
    for cut in (3, 5, 7):
        first = _batches(held)
        it = iter(first)
        assert _same(_take(it, cut), want[:cut])
        position = json.loads(json.dumps(first.position()))  # as a checkpoint stores it
        resumed = _batches(held)
        resumed.restore(position)
        assert _same(_take(iter(resumed), 13 - cut), want[cut:]), cut


def test_order_and_augmentation_are_a_function_of_the_seed(held):
    a, b, other = (_take(iter(_batches(held, seed=s)), 6) for s in (0, 0, 1))
    assert _same(a, b)
    assert not torch.equal(a[0][0], other[0][0])
    # a new epoch is a new permutation and new crops of the same samples
    epochs = _batches(held)
    assert not torch.equal(epochs.order(0), epochs.order(1))
    assert sorted(epochs.order(0).tolist()) == sorted(epochs.order(1).tolist())


def test_each_rank_takes_a_disjoint_share_of_the_same_size(held):
    data = held[0]
    ranks = [_batches(held, rank=r, world=3) for r in range(3)]
    assert {r.per_epoch for r in ranks} == {1}  # 40 samples: 13 a rank, one batch of 8
    for epoch in (0, 1):
        shares = [set(r.order(epoch).tolist()) for r in ranks]
        assert [len(s) for s in shares] == [8, 8, 8]
        assert not (shares[0] & shares[1] or shares[0] & shares[2] or shares[1] & shares[2])
        assert set().union(*shares) <= set(range(len(data)))
    with pytest.raises(RuntimeError, match="cannot fill one batch"):
        _batches(held, batch_size=16, world=3)


def test_targets_and_texts_are_the_streams_choice_for_the_sample(held):
    data, maker, _ = held
    mb = _batches(held)
    idx = mb.order(0)[:8]
    _images, target_idx, target_w, tokens = mb.batch(0, idx)
    for row, i in enumerate(idx.tolist()):
        seed = _seed(0, 0, data.keys[i])  # the stream seeds a sample the same way
        labels = data.labels[i]
        choice = maker.text_choice(labels, seed)
        want = data.alt_tokens[i] if choice == ALT_TEXT else maker.entity_texts(choice)
        assert torch.equal(tokens[row], want)
        # the alt-texts were tokenized in bulk: the same rows as the stream's one at a time
        alt = maker._alt_text({"txt": f"alt text of sample {int(data.keys[i])}".encode()})
        assert torch.equal(data.alt_tokens[i], alt)
        assert target_idx[row][target_idx[row] >= 0].tolist() and \
            float(target_w[row].sum()) == pytest.approx(1.0)


def test_augmentation_keeps_shape_and_range_and_matches_pil(held):
    data, _, augment = held
    idx = torch.arange(16)
    images = _batches(held).batch(0, idx)[0]
    assert images.shape == (16, 3, augment.size, augment.size)
    assert images.dtype == torch.float32
    mean, std = torch.tensor(augment.mean), torch.tensor(augment.std)
    lo, hi = (-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1)
    assert bool(((images >= lo - 1e-5) & (images <= hi + 1e-5)).all())
    # the same boxes cropped and resized by torchvision on PIL images: the same pixels up to
    # PIL's 8-bit rounding between its two passes
    rng = random.Random(5)
    boxes = [augment.box(rng, *data.sizes[i]) for i in idx.tolist()]
    ours = augment(data.images[idx], boxes)
    ref = []
    for i, box in zip(idx.tolist(), boxes, strict=True):
        h, w = data.sizes[i]
        pil = Image.fromarray(data.images[i, :h, :, :w].permute(0, 2, 1).numpy())
        crop = TF.resized_crop(pil, *box, [augment.size] * 2, T.InterpolationMode.BICUBIC,
                               antialias=True)
        ref.append(TF.normalize(TF.to_tensor(crop), augment.mean, augment.std))
    diff = (ours - torch.stack(ref)).abs() * std.view(1, 3, 1, 1) * 255  # in 8-bit levels
    assert float(diff.mean()) < 1.0 and float(diff.max()) < 24


def test_images_of_other_sizes_are_shrunk_padded_and_cropped_inside(tmp_path):
    shards = _shards(tmp_path, n=12, sizes=((64, 64), (96, 160), (40, 50)))
    maker = _maker("supervised", "entity")
    augment = memory.TensorAugment.from_transform(maker.transform)
    data = memory.load(shards, maker, augment, None)
    # shorter side brought down to the model's 64 px; smaller images kept as they are
    assert set(data.sizes) == {(64, 64), (107, 64), (50, 40)}  # (height, width)
    assert tuple(data.images.shape[1:]) == (107, 3, 64)
    for (h, w), img in zip(data.sizes, data.images, strict=True):  # edge-padded
        assert torch.equal(img[:, :, w:], img[:, :, w - 1:w].expand(-1, -1, 64 - w))
        assert torch.equal(img[h:], img[h - 1:h].expand(107 - h, -1, -1))
    rng = random.Random(0)
    for _ in range(200):
        h, w = rng.choice(data.sizes)
        top, left, ch, cw = augment.box(rng, h, w)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        # >= 90% of the area (less rounding), or torchvision's fallback for an image too
        # narrow for any allowed aspect: the largest centred crop at aspect 3:4
        assert ch * cw >= 0.85 * h * w or (cw, ch) == (w, round(w / 0.75))
    out = memory.MemoryBatches(data, maker, augment, 4, 0).batch(0, torch.arange(12))
    assert out[0].shape == (12, 3, 64, 64) and torch.isfinite(out[0]).all()


def test_auto_holds_small_local_data_and_streams_the_rest(held, tmp_path, monkeypatch):
    shards = _shards(tmp_path, n=10)
    maker = _maker()
    where = str(tmp_path)
    assert memory.choose("auto", where, shards, maker)[0] is not None
    assert memory.choose(True, where, shards, maker)[0] is not None
    assert memory.choose(False, where, shards, maker)[0] is None
    assert memory.choose("auto", "s3://bucket/i2e", ["s3://bucket/i2e/shards/0.tar"],
                         maker)[0] is None
    assert memory.choose("auto", where, shards, maker, resampled=True)[0] is None
    jitter = T.Compose([T.RandomResizedCrop(64), T.ColorJitter(0.4), T.ToTensor(),
                        T.Normalize((0.5,) * 3, (0.5,) * 3)])
    odd = _maker(transform=jitter)
    assert memory.choose("auto", where, shards, odd)[0] is None  # no tensor equivalent
    with pytest.raises(ValueError, match="data_in_memory=true"):
        memory.choose(True, where, shards, odd)
    augment = memory.TensorAugment.from_transform(maker.transform)
    # over the limit while decoding (or once padded): streamed
    assert memory.load(shards, maker, augment, limit_bytes=3 * 64 * 64 * 5) is None
    assert memory.load(shards, maker, augment, limit_bytes=None) is not None
    monkeypatch.setattr(memory, "AUTO_LIMIT_BYTES", 100)  # shards larger than that on disk
    assert memory.choose("auto", where, shards, maker)[0] is None
    assert memory.choose(True, where, shards, maker)[0] is not None


def test_a_streaming_checkpoint_is_not_resumed_in_memory(held):
    with pytest.raises(ValueError, match="streaming loader"):
        _batches(held).restore({"epoch": 0, "workers": 1, "taken": {"0": 3}})


def test_data_in_memory_is_a_result_key_taking_auto_or_a_bool():
    cfg = TrainConfig(recipe="supervised")
    assert cfg.data_in_memory == "auto" and "data_in_memory" not in TrainConfig.RUNTIME
    assert cfg.result_key()["data_in_memory"] == "auto"
    assert TrainConfig(recipe="supervised", data_in_memory=False).data_in_memory is False
    assert TrainConfig(recipe="supervised", data_in_memory="true").data_in_memory is True
    with pytest.raises(ValueError):
        TrainConfig(recipe="supervised", data_in_memory="sometimes")


def test_excluded_keys_are_never_trained_on_in_memory_or_streamed(held, tmp_path):
    """decontam's near-copies: the held set and the shard stream both leave them out."""
    from mofi_core.train.data import ShardStream

    data, maker, augment = held
    shards = _shards(tmp_path / "shards")
    drop = frozenset({"000000003", "000000017", "000000031"})
    kept = memory.load(shards, maker, augment, None, exclude=drop)
    assert sorted(kept.keys) == sorted(set(data.keys) - drop) and len(kept.keys) == 37
    seen: list[str] = []

    def record(sample, seed):
        seen.append(sample["__key__"])
        return (torch.zeros(1),)

    stream = ShardStream(shards, record, batch_size=1, shuffle_buffer=4, seed=0, exclude=drop)
    assert len(list(stream)) == 37
    assert set(seen) == set(data.keys) - drop
