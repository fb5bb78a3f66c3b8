"""Images in, L2-normalised embeddings out: the registered model's contract.

A row carries the image bytes (``image``; base64 in JSON requests to ``mlflow models serve``). A
``path`` row is read only when the model is given an allowed root (``register.serve_path_root``,
or ``model_config={"allowed_root": ...}`` when loading): the path must resolve, symlinks
followed, inside that folder. Without one, a served model never reads a file of its host."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from mofi_core.models.artifact import LoadedModel


class PathNotAllowed(PermissionError):
    """A ``path`` row the model may not read."""


def allowed_file(path: str, allowed_root: str | Path | None) -> Path:
    """``path`` resolved (symlinks followed), if it lies inside ``allowed_root``."""
    if not allowed_root:
        raise PathNotAllowed("'path' input is off for this model: send the image bytes in the "
                             "'image' column (base64 in JSON)")
    root = Path(allowed_root).resolve()
    target = (root / path).resolve()  # an absolute path replaces root; '..' and links resolved
    if not target.is_relative_to(root):
        raise PathNotAllowed(f"'path' {path!r} is outside the model's allowed root")
    return target


def to_image(data: bytes | None, path: str | None, allowed_root: str | Path | None = None
             ) -> Image.Image:
    if data is not None and len(data) > 0:
        return Image.open(io.BytesIO(data)).convert("RGB")
    if path:
        with Image.open(allowed_file(path, allowed_root)) as img:
            return img.convert("RGB")
    raise ValueError("each row needs 'image' (bytes) or 'path' (file path)")


def _given(value):
    """None for the missing-value markers pandas puts in an optional column."""
    if value is None or (not isinstance(value, bytes | str) and pd.isna(value)):
        return None
    return value


def images_from_frame(frame: pd.DataFrame, allowed_root: str | Path | None = None
                      ) -> list[Image.Image]:
    """Rows with an ``image`` (bytes) or ``path`` column -> RGB images; paths only inside
    ``allowed_root`` (none without it)."""
    if "image" not in frame and "path" not in frame:
        raise ValueError(f"input needs an 'image' or 'path' column, got {list(frame.columns)}")
    none = [None] * len(frame)
    images = frame["image"] if "image" in frame else none
    paths = frame["path"] if "path" in frame else none
    return [to_image(_given(i), _given(p), allowed_root)
            for i, p in zip(images, paths, strict=True)]


class Encoder:
    """The served model: a model folder loaded once, on the CPU."""

    def __init__(self, model_dir: Path | str) -> None:
        self.loaded = LoadedModel.load(model_dir, torch.device("cpu"))

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        batch = torch.stack([self.loaded.transform(img) for img in images])
        feats = self.loaded.model.encode_image(batch).float()
        return torch.nn.functional.normalize(feats, dim=-1).numpy().astype(np.float32)
