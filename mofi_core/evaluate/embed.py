"""Embed image files with any loaded mofi model (CLIP or classifier): L2-normalised vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mofi_core.models.artifact import LoadedModel


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
                num_workers: int = 1) -> np.ndarray:
    dev = loaded.device
    loader = DataLoader(ImageFiles(files, loaded.transform), batch_size=batch_size,
                        num_workers=num_workers)
    out = []
    for images in loader:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            feats = loaded.model.encode_image(images.to(dev))
        out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)
