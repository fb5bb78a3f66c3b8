"""Image preprocessing in batches, with the exact output of the model's eval transform.

open_clip's eval transform takes one PIL image at a time: Resize (shortest side), CenterCrop,
convert to RGB, ToTensor, Normalize. Only the first two depend on the image; ToTensor (to
float, divide by 255) and Normalize (subtract the mean, divide by the std) are the same
elementwise float32 operations whether applied to one image or to a stacked batch, so
:class:`BatchPreprocess` runs them once per batch on uint8 pixels, on the model's device. JPEG
bytes are decoded by torchvision's libjpeg-turbo straight into a uint8 tensor (no Python-level
marker parsing); when the image already has the crop's size, resize and crop are identities
and PIL is skipped.

The batch equals ``torch.stack([transform(Image.open(b).convert("RGB")) ...])`` bit for bit
(tested on RGB, grayscale, CMYK, progressive and subsampled JPEGs, PNG, with and without
resizing). A transform of any other shape, e.g. a custom one, is applied as it is, one image
at a time.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

_RGB_STEPS = ("MaybeConvertMode", "_convert_to_rgb")
_TENSOR_STEPS = ("ToTensor", "MaybeToTensor")


def _name(step) -> str:
    return getattr(step, "__name__", type(step).__name__)


class BatchPreprocess:
    """``one(bytes)`` per image and ``collate(list)`` per batch (both in DataLoader workers),
    then ``normalize(batch)`` where the model runs."""

    def __init__(self, transform) -> None:
        self.transform = transform
        steps = list(transform.transforms) if isinstance(transform, T.Compose) else []
        shape = [type(s) for s in steps[:2]] == [T.Resize, T.CenterCrop] and len(steps) == 5 \
            and _name(steps[2]) in _RGB_STEPS and _name(steps[3]) in _TENSOR_STEPS \
            and isinstance(steps[4], T.Normalize) and not steps[4].inplace
        self.split = bool(shape)
        if self.split:
            self.resize, self.crop = steps[0], steps[1]
            size = self.crop.size
            self.out_hw = (size[0], size[1]) if len(size) == 2 else (size[0], size[0])
            self.mean = torch.tensor(steps[4].mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.tensor(steps[4].std, dtype=torch.float32).view(1, -1, 1, 1)

    def one(self, data: bytes) -> torch.Tensor:
        """uint8 CHW pixels after resize and crop (the split path), or the transform's output."""
        if not self.split:
            with Image.open(io.BytesIO(data)) as img:
                return self.transform(img.convert("RGB"))
        pixels = self._decode(data)
        if pixels is None:  # not a JPEG torchvision reads: PIL decodes (and names any error)
            with Image.open(io.BytesIO(data)) as img:
                return self._geometry(img.convert("RGB"))
        if self._identity(tuple(pixels.shape[1:])):
            return pixels
        return self._geometry(Image.fromarray(pixels.permute(1, 2, 0).numpy()))

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        """Stack per-image results: uint8 on the split path (a quarter of float32's bytes to
        send from a DataLoader worker), the transform's floats otherwise."""
        return torch.stack(items)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """Model input from a collated batch, on the batch's device (e.g. after ``.to(cuda)``)."""
        if not self.split:
            return batch
        x = batch.float().div(255)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))

    def __call__(self, data: list[bytes]) -> torch.Tensor:
        """Model input for a list of encoded images."""
        return self.normalize(self.collate([self.one(d) for d in data]))

    def _geometry(self, img: Image.Image) -> torch.Tensor:
        out = np.asarray(self.crop(self.resize(img)), dtype=np.uint8)
        return torch.from_numpy(out.copy()).permute(2, 0, 1)

    def _identity(self, hw: tuple[int, int]) -> bool:
        """Resize then crop leave an image of this size unchanged (same size in, same out)."""
        if tuple(hw) != self.out_hw:
            return False
        size = self.resize.size
        side = size if isinstance(size, int) else (size[0] if len(size) == 1 else None)
        if side is None:  # an explicit (h, w) resize: identity only when it is the same size
            return tuple(size) == tuple(hw)
        return min(hw) == side and self.resize.max_size is None

    @staticmethod
    def _decode(data: bytes) -> torch.Tensor | None:
        if not data.startswith(b"\xff\xd8"):
            return None
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                               mode=ImageReadMode.RGB)
        except RuntimeError:
            return None  # PIL decodes it instead and raises its own error for broken bytes
