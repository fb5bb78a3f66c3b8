"""Embed image files with any loaded mofi model (CLIP or classifier): L2-normalised vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mofi_core.models.artifact import LoadedModel
from mofi_core.progress import Progress


class ImageFiles(Dataset):
    def __init__(self, files: list[Path], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB"))


@torch.no_grad()
def embed_files(loaded: LoadedModel, files: list[Path], batch_size: int = 256,
                num_workers: int = 1, label: str = "embed") -> np.ndarray:
    """One row per file, in order; progress (``label``) counted per batch."""
    dev = loaded.device
    loader = DataLoader(ImageFiles(files, loaded.transform), batch_size=batch_size,
                        num_workers=num_workers)
    out, done = [], 0
    with Progress(label, len(files), "image") as progress:
        for images in loader:
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
