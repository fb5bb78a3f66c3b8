"""Embed image files with any mofi model folder (CLIP or classifier): L2-normalised vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mofi_core.device import resolve_device
from mofi_core.models.artifact import image_transform, load_model


class ImageFiles(Dataset):
    def __init__(self, files: list[Path], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB"))


@torch.no_grad()
def embed_files(model_dir: Path, files: list[Path], batch_size: int = 256, device: str = "auto",
                num_workers: int = 1) -> np.ndarray:
    model, meta = load_model(model_dir)
    dev = resolve_device(device)
    model = model.to(dev)
    loader = DataLoader(ImageFiles(files, image_transform(meta)), batch_size=batch_size,
                        num_workers=num_workers)
    out = []
    for images in loader:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            feats = model.encode_image(images.to(dev))
        out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)
