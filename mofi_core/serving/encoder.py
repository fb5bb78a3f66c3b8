"""Images in, L2-normalised embeddings out: the registered model's contract.

A row carries the image bytes (``image``; base64 in JSON requests to ``mlflow models serve``). A
``path`` row is read only when the model is given an allowed root (``register.serve_path_root``,
or ``model_config={"allowed_root": ...}`` when loading): the path must resolve, symlinks
followed, inside that folder. Without one, a served model never reads a file of its host.

Input the model cannot embed raises :class:`~mofi_core.serving.errors.InvalidInput` (HTTP 400
from a scoring server) with a one-line message naming the row; it never echoes a host path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from mofi_core.models.artifact import LoadedModel
from mofi_core.serving.errors import InvalidInput

# what PIL raises for bytes that are not a (complete, sane) image it can decode
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class PathNotAllowed(InvalidInput, PermissionError):
    """A ``path`` row the model may not read (HTTP 400 when served)."""


def _shown(path: str, limit: int = 200) -> str:
    """A client's path for a message: quoted, cut to ``limit`` characters."""
    return repr(path if len(path) <= limit else path[:limit] + "...")


def allowed_file(path: str, allowed_root: str | Path | None) -> Path:
    """``path`` resolved (symlinks followed), if it lies inside ``allowed_root``."""
    if not allowed_root:
        raise PathNotAllowed("'path' input is off for this model: send the image bytes in the "
                             "'image' column (base64 in JSON)")
    if not isinstance(path, str):
        raise InvalidInput(f"'path' must be a string, got {type(path).__name__}")
    root = Path(allowed_root).resolve()
    try:  # an absolute path replaces root; '..' and links resolved
        target = (root / path).resolve()
    except (OSError, ValueError):  # a NUL byte, a symlink loop, ...
        raise InvalidInput(f"'path' {_shown(path)} is not a usable file path") from None
    if not target.is_relative_to(root):
        raise PathNotAllowed(f"'path' {_shown(path)} is outside the model's allowed root")
    return target


def _decode(fp, what: str) -> Image.Image:
    try:
        with Image.open(fp) as img:
            return img.convert("RGB")
    except _UNREADABLE:
        raise InvalidInput(f"{what} is not an image this model can read (JPEG, PNG, WebP, "
                           "GIF, ...) or is truncated") from None


def to_image(data: bytes | None, path: str | None, allowed_root: str | Path | None = None
             ) -> Image.Image:
    if data is not None and len(data) > 0:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInput("'image' must be the image file's bytes (base64 in JSON), "
                               f"got {type(data).__name__}")
        return _decode(io.BytesIO(data), "'image'")
    if path:
        target = allowed_file(path, allowed_root)
        try:
            fp = open(target, "rb")  # closed by the with below
        except FileNotFoundError:
            raise InvalidInput(f"'path' {_shown(path)}: no such file in the model's allowed "
                               "root") from None
        except OSError as err:  # a folder, no permission, ...: no host path in the message
            raise InvalidInput(f"'path' {_shown(path)} cannot be read "
                               f"({err.strerror or type(err).__name__})") from None
        with fp:
            return _decode(fp, f"'path' {_shown(path)}")
    raise InvalidInput("each row needs 'image' (bytes) or 'path' (file path)")


def _given(value):
    """None for the missing-value markers pandas puts in an optional column."""
    if value is None or (not isinstance(value, bytes | str) and pd.isna(value)):
        return None
    return value


def images_from_frame(frame: pd.DataFrame, allowed_root: str | Path | None = None
                      ) -> list[Image.Image]:
    """Rows with an ``image`` (bytes) or ``path`` column -> RGB images; paths only inside
    ``allowed_root`` (none without it). Raises :class:`InvalidInput` ("row N: ...")."""
    if "image" not in frame and "path" not in frame:
        got = [str(c) for c in frame.columns][:10]
        raise InvalidInput("input needs an 'image' column (image bytes, base64 in JSON) or a "
                           "'path' column" + (f", got {got}" if got else ""))
    if len(frame) == 0:
        raise InvalidInput("the input has no rows: send at least one image")
    none = [None] * len(frame)
    images = frame["image"] if "image" in frame else none
    paths = frame["path"] if "path" in frame else none
    out = []
    for row, (i, p) in enumerate(zip(images, paths, strict=True)):
        try:
            out.append(to_image(_given(i), _given(p), allowed_root))
        except InvalidInput as err:  # same type (PathNotAllowed stays one), row named
            raise type(err)(f"row {row}: {err.message}") from None
    return out


class Encoder:
    """The served model: a model folder loaded once, on the CPU."""

    def __init__(self, model_dir: Path | str) -> None:
        self.loaded = LoadedModel.load(model_dir, torch.device("cpu"))

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        batch = torch.stack([self.loaded.transform(img) for img in images])
        feats = self.loaded.model.encode_image(batch).float()
        return torch.nn.functional.normalize(feats, dim=-1).numpy().astype(np.float32)
