"""Draw demo-world images: an entity's object over clutter, varied per image.

The object identity (silhouette per type, colours, pattern, mark per entity) is stable; position,
scale, rotation, background, colour jitter, occlusion and JPEG quality vary per image.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from mofi_core.demo.entities import SHAPES, TYPES, Entity

_TINTS = ((150, 140, 130), (120, 160, 210), (200, 200, 200), (180, 170, 160), (90, 150, 90),
          (110, 170, 190))
_BACKGROUND_TINT = dict(zip(TYPES, _TINTS, strict=True))
_CANVAS = 128  # objects are drawn at this size, then resized into the image


def _silhouette(draw: ImageDraw.ImageDraw, shape: str, w: int, h: int) -> None:
    if shape == "figure":
        draw.ellipse((w * .35, 0, w * .65, h * .3), fill=255)
        draw.rounded_rectangle((w * .2, h * .32, w * .8, h), radius=int(w * .15), fill=255)
    elif shape == "tower":
        draw.polygon([(w * .5, 0), (w * .75, h), (w * .25, h)], fill=255)
        draw.rectangle((w * .1, h * .85, w * .9, h), fill=255)
    elif shape == "badge":
        draw.regular_polygon((w / 2, h / 2, min(w, h) / 2), n_sides=6, fill=255)
    elif shape == "device":
        draw.rounded_rectangle((w * .1, h * .2, w * .9, h * .8), radius=int(w * .1), fill=255)
    elif shape == "creature":
        draw.ellipse((w * .15, h * .3, w * .85, h * .75), fill=255)
        draw.polygon([(w * .15, h * .5), (0, h * .25), (0, h * .75)], fill=255)
    else:  # landscape
        draw.polygon([(0, h), (w * .3, h * .3), (w * .55, h * .7), (w * .8, h * .2), (w, h)],
                     fill=255)


def _pattern_layer(e: Entity, w: int, h: int) -> Image.Image:
    layer = Image.new("RGB", (w, h), e.primary)
    d = ImageDraw.Draw(layer)
    step = max(6, w // 8)
    if e.pattern == "stripes":
        for x in range(-h, w, step):
            d.line((x, 0, x + h, h), fill=e.secondary, width=step // 2)
    elif e.pattern == "dots":
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                d.ellipse((x - step // 4, y - step // 4, x + step // 4, y + step // 4),
                          fill=e.secondary)
    elif e.pattern == "checker":
        for y in range(0, h, step):
            for x in range((y // step) % 2 * step, w, 2 * step):
                d.rectangle((x, y, x + step - 1, y + step - 1), fill=e.secondary)
    elif e.pattern == "band":
        d.rectangle((0, h * .45, w, h * .6), fill=e.secondary)
    # a small entity-specific mark in the secondary colour's complement
    mark_color = tuple(255 - c for c in e.secondary)
    cx, cy, r = w * .5, h * .55, w * .1
    if e.mark == 0:
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=mark_color)
    elif e.mark == 1:
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=mark_color)
    elif e.mark == 2:
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=mark_color)
    else:
        d.line((cx - r, cy - r, cx + r, cy + r), fill=mark_color, width=max(2, int(r / 2)))
    return layer


def draw_object(e: Entity) -> tuple[Image.Image, Image.Image]:
    """The entity's object (RGB) and its mask (L), drawn once and reused for every image."""
    w, h = _CANVAS, int(_CANVAS * e.aspect)
    mask = Image.new("L", (w, h), 0)
    _silhouette(ImageDraw.Draw(mask), SHAPES[e.type], w, h)
    return _pattern_layer(e, w, h), mask


def _background(etype: str, size: int, rng: np.random.Generator) -> Image.Image:
    tint = np.array(_BACKGROUND_TINT[etype]) + rng.integers(-40, 41, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    img = Image.fromarray(np.clip(tint + noise, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):  # clutter
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.line((x0, y0, x1, y1), fill=color, width=int(rng.integers(1, 4)))
        else:
            d.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=color)
    return img


def _paste(img: Image.Image, obj: tuple[Image.Image, Image.Image], scale: float,
           rng: np.random.Generator) -> None:
    rgb, mask = obj
    size = img.width
    angle = float(rng.uniform(-25, 25))
    tw = max(4, int(size * scale))
    th = max(4, int(tw * rgb.height / rgb.width))
    rgb = rgb.resize((tw, th), Image.BILINEAR).rotate(angle, expand=True, resample=Image.BILINEAR)
    mask = mask.resize((tw, th), Image.BILINEAR).rotate(angle, expand=True,
                                                        resample=Image.BILINEAR)
    x = int(rng.integers(-rgb.width // 5, max(1, size - rgb.width * 4 // 5)))
    y = int(rng.integers(-rgb.height // 5, max(1, size - rgb.height * 4 // 5)))
    img.paste(rgb, (x, y), mask)


def render(objects: list[tuple[Entity, tuple[Image.Image, Image.Image]]], size: int,
           rng: np.random.Generator) -> bytes:
    """One JPEG showing the given objects (first is the main one) over a cluttered background."""
    img = _background(objects[0][0].type, size, rng)
    for i, (_, obj) in enumerate(objects):
        _paste(img, obj, float(rng.uniform(0.45, 0.85) if i == 0 else rng.uniform(0.3, 0.5)), rng)
    if rng.random() < 0.2:  # occluder
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        ImageDraw.Draw(img).rectangle((x0, y0, x0 + size // 4, y0 + size // 4),
                                      fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.75, 1.25)))
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.7, 1.3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    return buf.getvalue()
