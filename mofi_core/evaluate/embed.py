"""Embed image files with any loaded mofi model (CLIP or classifier): L2-normalised vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mofi_core.models.artifact import LoadedModel
from mofi_core.progress import Progress


class DecodedImages:
    """Preprocessed image batches kept for the next model with the same transform: the
    evaluate stage embeds the same benchmark and labelled files with every compared model, and
    decoding them cost more than encoding them with the demo's models. Kept only while the
    tensors fit ``max_bytes``; anything larger is decoded again for each model."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes, self.used = max_bytes, 0
        self._sets: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def key(files: list[Path], transform) -> tuple:
        return repr(transform), tuple(str(f) for f in files)

    def get(self, files: list[Path], transform) -> torch.Tensor | None:
        return self._sets.get(self.key(files, transform))

    def fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.max_bytes

    def put(self, files: list[Path], transform, images: torch.Tensor) -> None:
        """Keep ``images`` if they fit (the caller checks first, to stop holding batches)."""
        size = images.numel() * images.element_size()
        if self.fits(size):
            self._sets[self.key(files, transform)] = images
            self.used += size


class ImageFiles(Dataset):
    def __init__(self, files: list[Path], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB"))


def _batches(loaded: LoadedModel, files: list[Path], batch_size: int, num_workers: int,
             decoded: DecodedImages | None):
    """Preprocessed batches of ``files``: from ``decoded`` when an earlier model with the same
    transform left them there, else decoded (and left there when they fit)."""
    held = decoded.get(files, loaded.transform) if decoded is not None else None
    if held is not None:
        yield from held.split(batch_size)
        return
    loader = DataLoader(ImageFiles(files, loaded.transform), batch_size=batch_size,
                        num_workers=num_workers)
    keep: list[torch.Tensor] | None = [] if decoded is not None else None
    size = 0
    for images in loader:
        if keep is not None:
            size += images.numel() * images.element_size()
            if decoded.fits(size):
                keep.append(images)
            else:  # past what is left: stop holding batches (decoded again next time)
                keep = None
        yield images
    if keep:
        decoded.put(files, loaded.transform, torch.cat(keep))


@torch.no_grad()
def embed_files(loaded: LoadedModel, files: list[Path], batch_size: int = 256,
                num_workers: int = 1, label: str = "embed",
                decoded: DecodedImages | None = None) -> np.ndarray:
    """One row per file, in order; progress (``label``) counted per batch. ``decoded``: share
    preprocessed images between models (see :class:`DecodedImages`)."""
    dev = loaded.device
    out, done = [], 0
    with Progress(label, len(files), "image") as progress:
        for images in _batches(loaded, files, batch_size, num_workers, decoded):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                feats = loaded.model.encode_image(images.to(dev)).float()
            norms = feats.norm(dim=-1)
            bad = torch.nonzero(~torch.isfinite(norms) | (norms == 0)).flatten().tolist()
            if bad:
                raise ValueError(f"{label}: the encoder gave a zero or non-finite embedding for "
                                 f"{files[done + bad[0]]}; check the model's weights")
            # normalised once, here: retrieval ranks by the dot product of what it is given
            out.append((feats / norms[:, None]).cpu().numpy())
            done += len(images)
            progress.advance(len(images))
    return np.concatenate(out)
