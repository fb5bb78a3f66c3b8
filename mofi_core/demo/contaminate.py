"""Near-copies of images, as they leak from evaluation sets into web corpora: resized
thumbnails, low-quality re-encodes, crops and colour edits. The demo world and the
decontamination tests plant them in a corpus to check that they are found.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

KINDS = ("resize", "reencode", "crop", "colour")


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def near_copy(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """JPEG bytes of a modified copy of the encoded image ``data``.

    - ``resize``: downscaled to 50-80 % of each side; half the time scaled back up to the
      original size (a thumbnail, or an upscaled thumbnail), re-encoded at quality 70-90;
    - ``reencode``: re-encoded as JPEG at quality 30-60;
    - ``crop``: 80-92 % of each side kept (drawn per side) at a random offset, resized back
      to the original size;
    - ``colour``: saturation x0.6-1.4, brightness x0.8-1.2, contrast x0.85-1.15, then a tint
      (each channel shifted by up to +-15 levels), as a photo filter or white balance does.
      No hue rotation: even +-6 degrees of it moves the grey-level pHash past the default
      threshold for a few % of the demo images (see ``mofi_core.curate.decontam``).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown near-copy kind {kind!r}; expected one of {', '.join(KINDS)}")
    with Image.open(io.BytesIO(data)) as src:
        img = src.convert("RGB")
    w, h = img.size
    if kind == "resize":
        f = float(rng.uniform(0.5, 0.8))
        small = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC)
        if rng.random() < 0.5:
            small = small.resize((w, h), Image.BICUBIC)
        return _jpeg(small, int(rng.integers(70, 91)))
    if kind == "reencode":
        return _jpeg(img, int(rng.integers(30, 61)))
    if kind == "crop":
        cw = max(1, round(w * float(rng.uniform(0.80, 0.92))))
        ch = max(1, round(h * float(rng.uniform(0.80, 0.92))))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)
        return _jpeg(out, int(rng.integers(70, 91)))
    # colour
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.6, 1.4)))
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.85, 1.15)))
    shift = rng.integers(-15, 16, 3)
    arr = np.clip(np.asarray(img, dtype=np.int16) + shift, 0, 255).astype(np.uint8)
    return _jpeg(Image.fromarray(arr, "RGB"), int(rng.integers(70, 91)))
