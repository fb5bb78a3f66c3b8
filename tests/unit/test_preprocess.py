"""BatchPreprocess must give exactly the model's eval transform, whatever the image."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T

from mofi_core.models.artifact import default_meta, image_transform
from mofi_core.models.factory import arch_config
from mofi_core.models.preprocess import BatchPreprocess


def encoded(mode: str, size: tuple[int, int], fmt: str = "JPEG", seed: int = 0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    # smooth gradients plus noise: JPEG chroma subsampling and IDCT rounding both matter
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([xx * 3 % 256, yy * 5 % 256, (xx + yy) * 2 % 256], -1)
    arr = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt, **save)
    return buf.getvalue()


def reference(transform, data: list[bytes]) -> torch.Tensor:
    return torch.stack([transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in data])


def transform_for(image_size: int):
    meta = default_meta("clip", "mofi-tiny", arch_config("mofi-tiny"), "clip")
    return image_transform(dataclasses.replace(meta, image_size=image_size))


IMAGES = {
    "rgb": encoded("RGB", (64, 64), quality=90),
    "rgb_wide": encoded("RGB", (96, 64), quality=75, seed=1),
    "rgb_small": encoded("RGB", (40, 56), quality=95, seed=2),
    "grey": encoded("L", (64, 64), seed=3),
    "cmyk": encoded("CMYK", (64, 64), seed=4),
    "progressive": encoded("RGB", (64, 64), progressive=True, seed=5),
    "no_subsampling": encoded("RGB", (64, 64), subsampling=0, seed=6),
    "png": encoded("RGB", (64, 64), "PNG", seed=7),
    "png_alpha": encoded("RGBA", (70, 64), "PNG", seed=8),
}


@pytest.mark.parametrize("image_size", [64, 48, 224])
def test_batches_equal_the_per_image_transform_bit_for_bit(image_size: int) -> None:
    transform = transform_for(image_size)
    prep = BatchPreprocess(transform)
    assert prep.split  # open_clip's eval transform is recognised
    data = list(IMAGES.values())
    got = prep(data)
    want = reference(transform, data)
    assert got.dtype == want.dtype == torch.float32
    assert torch.equal(got, want), (got - want).abs().max()
    # the collated batch is uint8: what a DataLoader worker sends
    assert prep.collate([prep.one(d) for d in data]).dtype == torch.uint8


def test_images_of_the_crop_size_skip_resizing_and_still_match() -> None:
    transform = transform_for(64)
    prep = BatchPreprocess(transform)
    one = prep.one(IMAGES["rgb"])
    assert one.shape == (3, 64, 64) and one.dtype == torch.uint8
    assert prep._identity((64, 64)) and not prep._identity((64, 96))
    assert torch.equal(prep.normalize(one[None]), reference(transform, [IMAGES["rgb"]]))


def test_an_unrecognised_transform_is_applied_as_it_is() -> None:
    custom = T.Compose([T.Resize(32), T.ToTensor()])
    prep = BatchPreprocess(custom)
    assert not prep.split
    data = [IMAGES["rgb"], IMAGES["png"]]
    assert torch.equal(prep(data), reference(custom, data))


def test_broken_bytes_raise_the_image_error() -> None:
    prep = BatchPreprocess(transform_for(64))
    with pytest.raises(UnidentifiedImageError):
        prep.one(b"\xff\xd8 this is no jpeg")
    with pytest.raises(OSError):
        prep.one(IMAGES["rgb"][:200])  # truncated JPEG: PIL names it
