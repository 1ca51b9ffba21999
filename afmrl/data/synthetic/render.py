"""Photographing a product in a seller's style: background, framing, lighting, blur, watermark, JPEG.

A seller has one :class:`PhotoStyle` (their studio: background, usual framing, lighting, camera
sharpness, JPEG setting, watermark). Every photo is that style jittered by the shot's own random
stream (:func:`jitter`), so two photos of one listing are two shots, and listings of one product
from different sellers look different while a seller's products look alike.

Drawing happens at twice the output size and is reduced at the end (anti-aliasing).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .drawing import RGB, draw_item, font, mix, shade

SUPERSAMPLE = 2

_NEUTRAL_BACKGROUNDS: tuple[RGB, ...] = (
    (250, 250, 250), (238, 238, 236), (246, 240, 228), (228, 234, 242), (214, 214, 210),
)  # fmt: skip
_COLOURED_BACKGROUNDS: tuple[RGB, ...] = (
    (200, 224, 246), (250, 222, 228), (214, 236, 214), (246, 236, 196), (226, 214, 240),
)  # fmt: skip
_DARK_BACKGROUNDS: tuple[RGB, ...] = ((48, 52, 58), (96, 72, 52), (176, 152, 120), (70, 86, 96))
BACKGROUND_KINDS: tuple[str, ...] = ("solid", "gradient", "radial", "noise", "planks", "tiles")
WATERMARK_PLACES: tuple[str, ...] = (
    "bottom-right",
    "top-left",
    "top-right",
    "bottom-left",
    "centre",
)


@dataclass(frozen=True)
class PhotoStyle:
    """How one seller (or one shot of theirs) photographs a product."""

    background: str
    bg: RGB
    bg2: RGB
    #: Size of the product group relative to the frame.
    scale: float
    #: Degrees, counter-clockwise.
    rotation: float
    #: Shift of the product centre, in frame fractions.
    offset: tuple[float, float]
    #: Fraction of the frame side cut away by a crop (0 = none), and where the crop window sits.
    crop: float
    crop_anchor: tuple[float, float]
    brightness: float
    contrast: float
    tint: tuple[float, float, float]
    #: Uneven lighting: how much darker the far side is, and the direction of the light.
    light_falloff: float
    light_angle: float
    #: Gaussian blur radius in output pixels.
    blur: float
    jpeg_quality: int
    watermark: str | None
    watermark_place: str
    watermark_alpha: int
    shadow: bool


def sample_seller_style(rng: np.random.Generator, shop_name: str) -> PhotoStyle:
    """A seller's studio, drawn once per seller."""
    u = rng.random()
    palette = (
        _NEUTRAL_BACKGROUNDS
        if u < 0.55
        else _COLOURED_BACKGROUNDS
        if u < 0.85
        else _DARK_BACKGROUNDS
    )
    bg = palette[int(rng.integers(len(palette)))]
    bg2 = (
        shade(bg, float(rng.uniform(0.82, 0.95)))
        if sum(bg) > 300
        else mix(bg, (255, 255, 255), 0.15)
    )
    watermark = None
    if rng.random() < 0.4:
        forms = (shop_name, f"© {shop_name}", f"www.{shop_name}.com", shop_name.upper())
        watermark = forms[int(rng.integers(len(forms)))]
    blurry = rng.random() < 0.4
    q = rng.random()
    quality = int(
        rng.integers(75, 96)
        if q < 0.5
        else rng.integers(50, 76)
        if q < 0.85
        else rng.integers(30, 51)
    )
    return PhotoStyle(
        background=BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))],
        bg=bg,
        bg2=bg2,
        scale=float(rng.uniform(0.64, 0.92)),
        rotation=float(rng.normal(0, 2) if rng.random() < 0.7 else rng.uniform(-14, 14)),
        offset=(float(rng.uniform(-0.07, 0.07)), float(rng.uniform(-0.07, 0.07))),
        crop=float(rng.uniform(0.05, 0.2)) if rng.random() < 0.35 else 0.0,
        crop_anchor=(0.5, 0.5),
        brightness=float(rng.uniform(0.84, 1.14)),
        contrast=float(rng.uniform(0.85, 1.15)),
        tint=tuple(float(t) for t in rng.uniform(0.93, 1.07, 3)),  # type: ignore[arg-type]
        light_falloff=float(rng.uniform(0.0, 0.3)),
        light_angle=float(rng.uniform(0, 360)),
        blur=float(rng.uniform(0.3, 0.9) if blurry else rng.uniform(0.0, 0.3)),
        jpeg_quality=quality,
        watermark=watermark,
        watermark_place=WATERMARK_PLACES[int(rng.integers(len(WATERMARK_PLACES)))],
        watermark_alpha=int(rng.integers(70, 150)),
        shadow=bool(rng.random() < 0.5),
    )


def jitter(style: PhotoStyle, rng: np.random.Generator) -> PhotoStyle:
    """Another shot in the same studio: framing, crop, exposure and sharpness move a little."""
    return replace(
        style,
        scale=float(np.clip(style.scale * rng.uniform(0.9, 1.08), 0.5, 0.97)),
        rotation=style.rotation + float(rng.normal(0, 4)),
        offset=(
            style.offset[0] + float(rng.uniform(-0.05, 0.05)),
            style.offset[1] + float(rng.uniform(-0.05, 0.05)),
        ),
        crop=float(np.clip(style.crop + rng.uniform(-0.04, 0.06), 0.0, 0.3)),
        crop_anchor=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1))),
        brightness=style.brightness * float(rng.uniform(0.94, 1.06)),
        light_angle=style.light_angle + float(rng.normal(0, 20)),
        blur=style.blur * float(rng.uniform(0.8, 1.2)),
        jpeg_quality=int(np.clip(style.jpeg_quality + rng.integers(-5, 6), 20, 98)),
    )


def _background(style: PhotoStyle, size: int, rng: np.random.Generator) -> Image.Image:
    kind, a, b = style.background, style.bg, style.bg2
    if kind == "solid":
        return Image.new("RGB", (size, size), a)
    if kind in ("gradient", "radial"):
        grad = Image.linear_gradient("L") if kind == "gradient" else Image.radial_gradient("L")
        return Image.composite(
            Image.new("RGB", (size, size), b),
            Image.new("RGB", (size, size), a),
            grad.resize((size, size)),
        )
    if kind == "noise":
        half = size // 2
        noise = rng.normal(0, 7, (half, half, 1)) + np.asarray(a, dtype=np.float64)
        img = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
        return img.resize((size, size), Image.Resampling.NEAREST)
    img = Image.new("RGB", (size, size), a)
    d = ImageDraw.Draw(img)
    if kind == "planks":
        step = size / 5
        for k in range(5):
            if k % 2:
                d.rectangle([k * step, 0, (k + 1) * step, size], fill=mix(a, b, 0.6))
            d.line([k * step, 0, k * step, size], fill=b, width=2)
    else:  # tiles
        step = size / 4
        for i in range(4):
            for j in range(4):
                if (i + j) % 2:
                    d.rectangle(
                        [i * step, j * step, (i + 1) * step, (j + 1) * step], fill=mix(a, b, 0.5)
                    )
    return img


def _product_group(attrs: Mapping[str, str], size: int, texture_seed: Sequence[int]) -> Image.Image:
    """``count`` items of the product, staggered front-left to back-right (a multipack shot)."""
    n = int(attrs["count"])
    step_x, step_y = 0.2, 0.08
    item_size = int(size / (1 + step_x * (n - 1)))
    item = draw_item(attrs, item_size, texture_seed)
    height = int(item_size * (1 + step_y * (n - 1)))
    group = Image.new("RGBA", (size, height), (0, 0, 0, 0))
    for k in reversed(range(n)):
        x = int(k * step_x * item_size)
        y = int((n - 1 - k) * step_y * item_size)
        group.alpha_composite(item, (x, y))
    return group


def _lighting_lut(style: PhotoStyle) -> list[int]:
    """Per-channel lookup table: contrast around mid-grey, then brightness and colour tint."""
    v = (np.arange(256) - 128) * style.contrast + 128
    lut = np.concatenate([v * (style.brightness * t) for t in style.tint])
    return np.clip(np.round(lut), 0, 255).astype(np.uint8).tolist()


def _watermark(img: Image.Image, style: PhotoStyle) -> None:
    size = img.width
    f = font(round(size * 0.075))
    text = style.watermark or ""
    left, top, right, bottom = f.getbbox(text)
    w, h = right - left, bottom - top
    layer = Image.new("RGBA", (w + 8, h + 8), (0, 0, 0, 0))
    colour = (255, 255, 255) if sum(style.bg) < 300 or style.watermark_alpha > 110 else (40, 40, 40)
    ImageDraw.Draw(layer).text(
        (4 - left, 4 - top), text, font=f, fill=(*colour, style.watermark_alpha)
    )
    m = round(size * 0.03)
    place = style.watermark_place
    if place == "centre":
        layer = layer.rotate(25, resample=Image.Resampling.BICUBIC, expand=True)
        xy = ((size - layer.width) // 2, (size - layer.height) // 2)
    else:
        x = m if "left" in place else size - layer.width - m
        y = m if "top" in place else size - layer.height - m
        xy = (x, y)
    img.paste(layer, xy, layer)


def _falloff(style: PhotoStyle, size: int) -> Image.Image:
    """Darkening mask for light coming from ``light_angle``: 0 on the lit side, up to
    ``light_falloff`` * 255 on the far side, smooth (built on a coarse grid, then resized)."""
    g = np.linspace(-0.5, 0.5, 16, dtype=np.float32)
    angle = np.deg2rad(style.light_angle)
    ramp = np.cos(angle) * g[None, :] + np.sin(angle) * g[:, None]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    mask = Image.fromarray(np.round(ramp * 255 * style.light_falloff).astype(np.uint8))
    return mask.resize((size, size), Image.Resampling.BILINEAR)


def render_photo(
    attrs: Mapping[str, str],
    style: PhotoStyle,
    texture_seed: Sequence[int],
    image_size: int,
    rng: np.random.Generator,
) -> Image.Image:
    """One product photo (RGB, ``image_size`` square) in ``style``; ``rng`` drives background noise."""
    size = image_size * SUPERSAMPLE
    canvas = _background(style, size, rng)
    group = _product_group(attrs, round(size * style.scale), texture_seed)
    group = group.rotate(style.rotation, resample=Image.Resampling.BILINEAR, expand=True)
    cx = size / 2 + style.offset[0] * size
    cy = size / 2 + style.offset[1] * size
    xy = (round(cx - group.width / 2), round(cy - group.height / 2))
    if style.shadow:
        alpha = group.getchannel("A").reduce(4).filter(ImageFilter.GaussianBlur(size * 0.005))
        alpha = alpha.point(lambda v: v * 45 // 100).resize(group.size, Image.Resampling.BILINEAR)
        shift = round(size * 0.025)
        canvas.paste((0, 0, 0), (xy[0] + shift, xy[1] + shift), alpha)
    canvas.paste(group, xy, group)
    if style.crop > 0:
        keep = round(size * (1 - style.crop))
        x0 = round((size - keep) * style.crop_anchor[0])
        y0 = round((size - keep) * style.crop_anchor[1])
        canvas = canvas.crop((x0, y0, x0 + keep, y0 + keep)).resize(
            (size, size), Image.Resampling.BILINEAR
        )
    canvas = canvas.point(_lighting_lut(style))
    if style.light_falloff > 0:
        canvas = Image.composite(
            Image.new("RGB", (size, size), (0, 0, 0)), canvas, _falloff(style, size)
        )
    if style.watermark:
        _watermark(canvas, style)
    canvas = canvas.reduce(SUPERSAMPLE)
    if style.blur > 0.05:
        canvas = canvas.filter(ImageFilter.GaussianBlur(style.blur))
    return canvas


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
