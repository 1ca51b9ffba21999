"""Drawing one product item: a category silhouette with its shape details, colours, print and brand.

Every category is drawn in unit coordinates on a transparent square, so the same product looks the
same at any size and any photo style. What the attributes change is visible: the shape keys change
the silhouette, the secondary colour paints a named part (trim, rim, lid, sole, straps, brim, bumper,
base), the pattern prints the main body and the brand word is printed on it. Size is deliberately
*not* drawn (it is only in titles), and the pack count is drawn by :mod:`.render` as several items.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from .schema import COLOURS

RGB = tuple[int, int, int]
Point = tuple[float, float]
DARK_INK: RGB = (24, 24, 26)
LIGHT_INK: RGB = (250, 250, 246)


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font (no font file needed, Pillow >= 10.1 with FreeType)."""
    return ImageFont.load_default(size=max(6, int(size)))


def shade(colour: Sequence[int], factor: float) -> RGB:
    """Darken (factor < 1) or brighten (factor > 1) a colour."""
    return tuple(int(max(0, min(255, round(c * factor)))) for c in colour)  # type: ignore[return-value]


def mix(a: Sequence[int], b: Sequence[int], t: float) -> RGB:
    """``a`` moved a fraction ``t`` towards ``b``."""
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def luminance(colour: Sequence[int]) -> float:
    r, g, b = colour[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def outline_colour(colour: Sequence[int]) -> RGB:
    """A visible edge colour for a body painted ``colour`` (darker, or lighter for near-black)."""
    return shade(colour, 0.55) if luminance(colour) > 60 else mix(colour, (255, 255, 255), 0.35)


def ink_for(colour: Sequence[int]) -> RGB:
    return DARK_INK if luminance(colour) > 150 else LIGHT_INK


def pattern_texture(
    size: int, pattern: str, main: RGB, secondary: RGB, texture_seed: Sequence[int]
) -> Image.Image:
    """An RGB square printed with ``pattern`` in the two colours (camouflage blobs from the seed)."""
    img = Image.new("RGB", (size, size), main)
    if pattern == "plain":
        return img
    d = ImageDraw.Draw(img)
    if pattern == "striped":
        period = size / 7.0
        for k in range(8):
            y = k * period + period * 0.3
            d.rectangle([0, y, size, y + period * 0.4], fill=secondary)
    elif pattern == "dotted":
        period = size / 8.0
        r = period * 0.2
        for row in range(9):
            for col in range(9):
                x = (col + 0.5 * (row % 2)) * period
                y = (row + 0.5) * period
                d.ellipse([x - r, y - r, x + r, y + r], fill=secondary)
    elif pattern == "checked":
        overlay = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        od = ImageDraw.Draw(overlay)
        period = size / 6.0
        for k in range(7):
            a = k * period
            od.rectangle([a, 0, a + period / 2, size], fill=(*secondary, 130))
        horizontal = overlay.transpose(Image.Transpose.ROTATE_90)
        img = Image.alpha_composite(img.convert("RGBA"), overlay)
        img = Image.alpha_composite(img, horizontal).convert("RGB")
    elif pattern == "camouflage":
        rng = np.random.default_rng(list(texture_seed))
        palette = (shade(main, 0.62), secondary, mix(main, secondary, 0.5))
        for colour in palette:
            for _ in range(9):
                cx, cy = rng.uniform(-0.05, 1.05, 2) * size
                for _ in range(3):
                    rx, ry = rng.uniform(0.04, 0.10, 2) * size
                    ox, oy = rng.uniform(-0.06, 0.06, 2) * size
                    d.ellipse([cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry], fill=colour)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return img


_ANY = [0] + [255] * 255


def _outer_edge(mask: Image.Image, width: int) -> Image.Image:
    """The ring of ``width`` pixels just outside ``mask`` (dilation by a box blur + threshold)."""
    grown = mask.filter(ImageFilter.BoxBlur(width)).point(_ANY)
    return ImageChops.subtract(grown, mask)


class Painter:
    """A transparent square to draw one item on, in unit coordinates."""

    def __init__(self, size: int, attrs: Mapping[str, str], texture_seed: Sequence[int]):
        self.s = size
        self.attrs = attrs
        self.main: RGB = COLOURS[attrs["colour"]]
        self.sec: RGB = COLOURS[attrs["secondary_colour"]]
        self.pattern = attrs["pattern"]
        self.texture_seed = texture_seed
        self.img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        self.d = ImageDraw.Draw(self.img)
        self.lw = max(1, round(size * 0.012))

    def p(self, pts: Sequence[Point]) -> list[Point]:
        return [(x * self.s, y * self.s) for x, y in pts]

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [x0 * self.s, y0 * self.s, x1 * self.s, y1 * self.s]

    def body(self, draw: Callable[[ImageDraw.ImageDraw], None]) -> Image.Image:
        """Paint the printed main body whose shape ``draw`` puts on a mask; returns the mask."""
        mask = Image.new("L", (self.s, self.s), 0)
        draw(ImageDraw.Draw(mask))
        texture = pattern_texture(self.s, self.pattern, self.main, self.sec, self.texture_seed)
        self.img.paste(texture, (0, 0), mask)
        self.img.paste(outline_colour(self.main), (0, 0), _outer_edge(mask, self.lw))
        return mask

    def solid(self, kind: str, geometry, colour: RGB, width: float = 0.0, **kw) -> None:
        """A plain part: ``kind`` is an ImageDraw method (polygon, ellipse, rounded_rectangle...)."""
        edge = outline_colour(colour)
        w = max(1, round(width * self.s)) if width else self.lw
        getattr(self.d, kind)(geometry, fill=colour, outline=edge, width=w, **kw)

    def line(self, pts: Sequence[Point], colour: RGB, width: float) -> None:
        self.d.line(self.p(pts), fill=colour, width=max(1, round(width * self.s)), joint="curve")

    def highlight(self, mask: Image.Image, x0: float, x1: float, alpha: int = 60) -> None:
        """A soft vertical gloss band on a body (mugs, bottles)."""
        band = Image.new("L", (self.s, self.s), 0)
        ImageDraw.Draw(band).rectangle(self.box(x0, 0, x1, 1), fill=alpha)
        self.img.paste((255, 255, 255), (0, 0), ImageChops.multiply(band, mask))

    def brand(self, cx: float, cy: float, max_w: float, max_h: float) -> None:
        """Print the brand word centred at (cx, cy), as large as fits in max_w x max_h."""
        text = self.attrs["brand"].upper()
        size = max_h * self.s
        f = font(round(size))
        left, top, right, bottom = f.getbbox(text)
        if right - left > max_w * self.s:
            f = font(int(size * max_w * self.s / (right - left)))
            left, top, right, bottom = f.getbbox(text)
        x, y = cx * self.s, cy * self.s
        ink = ink_for(self.main)
        if self.pattern != "plain":
            pad = max(2, round(0.02 * self.s))
            w, h = (right - left) / 2 + pad, (bottom - top) / 2 + pad
            self.d.rounded_rectangle(
                [x - w, y - h, x + w, y + h], radius=pad, fill=self.main, outline=ink, width=1
            )
        self.d.text((x, y), text, font=f, fill=ink, anchor="mm")


# --- categories ------------------------------------------------------------------------------


def _mirror(pts: Sequence[Point]) -> list[Point]:
    return [(1.0 - x, y) for x, y in pts]


def _t_shirt(pt: Painter, a: Mapping[str, str]) -> None:
    sleeve, neckline = a["sleeve"], a["neckline"]
    if sleeve == "sleeveless":
        torso = [(0.40, 0.12), (0.34, 0.12), (0.33, 0.22), (0.28, 0.33), (0.28, 0.93)]
    else:
        torso = [(0.40, 0.12), (0.28, 0.17), (0.28, 0.93)]
    torso = torso + _mirror(torso)[::-1]
    if sleeve == "short sleeve":
        arm = [(0.29, 0.17), (0.12, 0.29), (0.19, 0.43), (0.29, 0.37)]
        cuff = [(0.12, 0.29), (0.19, 0.43)]
    elif sleeve == "long sleeve":
        arm = [(0.29, 0.17), (0.17, 0.24), (0.06, 0.80), (0.16, 0.83), (0.28, 0.42)]
        cuff = [(0.06, 0.80), (0.16, 0.83)]
    else:
        arm, cuff = [], []

    def shape(d: ImageDraw.ImageDraw) -> None:
        d.polygon(pt.p(torso), fill=255)
        if arm:
            d.polygon(pt.p(arm), fill=255)
            d.polygon(pt.p(_mirror(arm)), fill=255)

    pt.body(shape)
    if cuff:
        pt.line(cuff, pt.sec, 0.04)
        pt.line(_mirror(cuff), pt.sec, 0.04)
    else:  # sleeveless: trimmed armholes
        hole = [(0.34, 0.12), (0.33, 0.22), (0.28, 0.33)]
        pt.line(hole, pt.sec, 0.025)
        pt.line(_mirror(hole), pt.sec, 0.025)
    pt.d.rectangle(pt.box(0.28, 0.895, 0.72, 0.93), fill=pt.sec)  # hem band
    inside = shade(pt.main, 0.55)
    if neckline == "crew neck":
        pt.d.ellipse(
            pt.box(0.40, 0.06, 0.60, 0.19), fill=inside, outline=pt.sec, width=round(0.028 * pt.s)
        )
    elif neckline == "v-neck":
        pt.d.chord(pt.box(0.40, 0.07, 0.60, 0.17), 180, 360, fill=inside)
        pt.d.polygon(pt.p([(0.40, 0.12), (0.5, 0.31), (0.60, 0.12)]), fill=inside)
        pt.line([(0.40, 0.115), (0.5, 0.31), (0.60, 0.115)], pt.sec, 0.028)
        pt.d.arc(pt.box(0.40, 0.07, 0.60, 0.17), 180, 360, fill=pt.sec, width=round(0.02 * pt.s))
    else:  # polo collar
        pt.d.chord(pt.box(0.40, 0.06, 0.60, 0.16), 180, 360, fill=pt.sec)
        pt.solid("rectangle", pt.box(0.475, 0.15, 0.525, 0.36), pt.sec)
        for y in (0.22, 0.30):
            r = 0.012
            pt.d.ellipse(pt.box(0.5 - r, y - r, 0.5 + r, y + r), fill=outline_colour(pt.sec))
        flap = [(0.40, 0.10), (0.50, 0.17), (0.45, 0.27), (0.35, 0.16)]
        pt.solid("polygon", pt.p(flap), pt.sec)
        pt.solid("polygon", pt.p(_mirror(flap)), pt.sec)
    pt.brand(0.5, 0.52, 0.38, 0.12)


def _mug(pt: Painter, a: Mapping[str, str]) -> None:
    body, handle = a["body"], a["handle"]
    top, bottom = 0.22, 0.86
    if body == "straight":
        left = [(0.18, top), (0.18, bottom - 0.03), (0.22, bottom)]
    elif body == "tapered":
        left = [(0.14, top), (0.23, bottom - 0.02), (0.26, bottom)]
    else:  # barrel
        left = [
            (0.20 - 0.06 * math.sin(math.pi * t), top + (bottom - 0.03 - top) * t)
            for t in np.linspace(0, 1, 9)
        ] + [(0.25, bottom)]
    xl, xr = left[0][0], 0.86 - left[0][0]
    outline = left + [(0.86 - x, y) for x, y in left][::-1]
    hw = round(0.055 * pt.s)
    if handle == "round":
        pt.d.ellipse(
            pt.box(xr - 0.16, 0.32, xr + 0.16, 0.70), outline=outline_colour(pt.sec), width=hw + 2
        )
        pt.d.ellipse(pt.box(xr - 0.155, 0.325, xr + 0.155, 0.695), outline=pt.sec, width=hw)
    elif handle == "square":
        pt.d.rounded_rectangle(
            pt.box(xr - 0.12, 0.34, xr + 0.15, 0.68),
            radius=round(0.02 * pt.s),
            outline=outline_colour(pt.sec),
            width=hw + 2,
        )
        pt.d.rounded_rectangle(
            pt.box(xr - 0.115, 0.345, xr + 0.145, 0.675),
            radius=round(0.02 * pt.s),
            outline=pt.sec,
            width=hw,
        )
    mask = pt.body(lambda d: d.polygon(pt.p(outline), fill=255))
    pt.highlight(mask, xl + 0.05, xl + 0.10)
    pt.d.ellipse(
        pt.box(xl, top - 0.045, xr, top + 0.045),
        fill=shade(pt.main, 0.45),
        outline=pt.sec,
        width=round(0.025 * pt.s),
    )
    pt.brand(0.43, 0.55, (xr - xl) * 0.72, 0.12)


def _bottle(pt: Painter, a: Mapping[str, str]) -> None:
    body, lid = a["body"], a["lid"]
    top, shoulder, bottom = 0.19, 0.31, 0.94
    neck = 0.075
    if body == "slim":
        side = [(0.5 - neck, top), (0.33, shoulder), (0.33, bottom - 0.02), (0.35, bottom)]
    elif body == "wide":
        side = [(0.5 - neck, top), (0.26, shoulder), (0.26, bottom - 0.03), (0.29, bottom)]
    else:  # curved (hourglass)
        side = (
            [(0.5 - neck, top), (0.28, shoulder)]
            + [
                (0.28 + 0.05 * math.sin(math.pi * t), shoulder + (bottom - 0.03 - shoulder) * t)
                for t in np.linspace(0.1, 1, 8)
            ]
            + [(0.31, bottom)]
        )
    outline = side + _mirror(side)[::-1]
    mask = pt.body(lambda d: d.polygon(pt.p(outline), fill=255))
    half = 0.5 - side[1][0]
    pt.highlight(mask, 0.5 - half + 0.04, 0.5 - half + 0.08, 70)
    if lid == "screw cap":
        pt.solid("rectangle", pt.box(0.41, 0.08, 0.59, 0.2), pt.sec)
        for x in np.linspace(0.43, 0.57, 6):
            pt.line([(x, 0.09), (x, 0.19)], outline_colour(pt.sec), 0.008)
    elif lid == "flip top":
        pt.solid("rectangle", pt.box(0.41, 0.13, 0.59, 0.2), pt.sec)
        pt.solid("polygon", pt.p([(0.41, 0.13), (0.59, 0.13), (0.64, 0.05), (0.47, 0.02)]), pt.sec)
        pt.d.ellipse(pt.box(0.55, 0.04, 0.61, 0.10), fill=shade(pt.sec, 0.6))
    else:  # sport spout
        pt.solid("rectangle", pt.box(0.40, 0.14, 0.60, 0.2), pt.sec)
        pt.solid(
            "rounded_rectangle", pt.box(0.465, 0.03, 0.535, 0.14), pt.sec, radius=round(0.02 * pt.s)
        )
        pt.d.arc(
            pt.box(0.56, 0.10, 0.68, 0.20), 270, 90, fill=outline_colour(pt.sec), width=pt.lw * 2
        )
    label_half = half if body != "curved" else half - 0.05
    pt.brand(0.5, 0.62, 2 * label_half * 0.85, 0.11)


_SNEAKER_UPPER = {
    "low top": [(0.07, 0.70), (0.07, 0.52), (0.12, 0.46), (0.24, 0.50), (0.36, 0.47), (0.44, 0.42), (0.52, 0.45), (0.80, 0.56), (0.92, 0.62), (0.95, 0.70)],
    "mid top": [(0.07, 0.70), (0.07, 0.38), (0.12, 0.32), (0.26, 0.36), (0.37, 0.34), (0.44, 0.31), (0.52, 0.40), (0.80, 0.56), (0.92, 0.62), (0.95, 0.70)],
    "high top": [(0.08, 0.70), (0.08, 0.22), (0.13, 0.16), (0.27, 0.19), (0.38, 0.18), (0.45, 0.18), (0.53, 0.36), (0.80, 0.56), (0.92, 0.62), (0.95, 0.70)],
}  # fmt: skip


def _sneaker(pt: Painter, a: Mapping[str, str]) -> None:
    upper = _SNEAKER_UPPER[a["cut"]]
    pt.body(lambda d: d.polygon(pt.p(upper), fill=255))
    # ankle opening
    (x0, y0), (x1, y1) = upper[2], upper[4]
    pt.d.chord(pt.box(x0, y0 - 0.03, x1, max(y0, y1) + 0.05), 180, 360, fill=shade(pt.main, 0.4))
    pt.solid("rounded_rectangle", pt.box(0.05, 0.69, 0.96, 0.80), pt.sec, radius=round(0.04 * pt.s))
    pt.line([(0.06, 0.745), (0.95, 0.745)], outline_colour(pt.sec), 0.008)
    # instep: from the tongue to the toe box
    (ax, ay), (bx, by) = upper[6], (0.76, 0.55)
    ink = ink_for(pt.main)
    closure = a["closure"]
    if closure == "laces":
        for t in np.linspace(0.08, 0.92, 5):
            x, y = ax + (bx - ax) * t, ay + (by - ay) * t
            pt.line([(x - 0.035, y - 0.035), (x + 0.035, y + 0.035)], ink, 0.014)
            pt.line([(x - 0.035, y + 0.035), (x + 0.035, y - 0.035)], ink, 0.014)
    elif closure == "velcro":
        for t in (0.2, 0.55, 0.9):
            x, y = ax + (bx - ax) * t, ay + (by - ay) * t
            strap = [
                (x - 0.03, y - 0.05),
                (x + 0.03, y - 0.07),
                (x + 0.07, y + 0.08),
                (x + 0.01, y + 0.1),
            ]
            pt.solid(
                "polygon", pt.p(strap), shade(pt.main, 0.7) if pt.pattern == "plain" else pt.main
            )
    else:  # slip-on: elastic gore panel, no fastening
        gore = [
            (ax - 0.02, ay + 0.01),
            (ax + 0.05, ay - 0.02),
            (ax + 0.10, ay + 0.12),
            (ax + 0.04, ay + 0.14),
        ]
        pt.solid("polygon", pt.p(gore), shade(pt.main, 0.45))
    pt.brand(0.31, 0.61, 0.32, 0.11)


def _backpack(pt: Painter, a: Mapping[str, str]) -> None:
    strap = [(0.27, 0.22), (0.19, 0.25), (0.14, 0.76), (0.22, 0.80)]
    pt.solid("polygon", pt.p(strap), pt.sec)
    pt.solid("polygon", pt.p(_mirror(strap)), pt.sec)
    pt.d.arc(pt.box(0.41, 0.07, 0.59, 0.25), 180, 360, fill=pt.sec, width=round(0.03 * pt.s))
    r = round(0.12 * pt.s)
    pt.body(lambda d: d.rounded_rectangle(pt.box(0.22, 0.15, 0.78, 0.92), radius=r, fill=255))
    edge = outline_colour(pt.main)
    closure = a["closure"]
    if closure == "zip":
        pt.d.arc(pt.box(0.25, 0.18, 0.75, 0.56), 195, 345, fill=edge, width=pt.lw * 2)
        pt.solid("rectangle", pt.box(0.66, 0.22, 0.69, 0.29), pt.sec)
    elif closure == "flap":
        flap = shade(pt.main, 0.8)
        pt.solid("rounded_rectangle", pt.box(0.22, 0.15, 0.78, 0.38), flap, radius=r)
        for x in (0.36, 0.64):
            pt.solid("rectangle", pt.box(x - 0.025, 0.3, x + 0.025, 0.44), pt.sec)
    else:  # roll top
        roll = shade(pt.main, 0.75)
        pt.solid(
            "rounded_rectangle", pt.box(0.24, 0.06, 0.76, 0.2), roll, radius=round(0.05 * pt.s)
        )
        pt.line([(0.27, 0.13), (0.73, 0.13)], edge, 0.01)
        pt.solid("rectangle", pt.box(0.475, 0.1, 0.525, 0.34), pt.sec)
    pocket = a["pocket"]
    boxes = {
        "single": [(0.31, 0.6, 0.69, 0.87)],
        "double": [(0.26, 0.61, 0.48, 0.87), (0.52, 0.61, 0.74, 0.87)],
    }
    for x0, y0, x1, y1 in boxes.get(pocket, []):
        pt.solid(
            "rounded_rectangle",
            pt.box(x0, y0, x1, y1),
            shade(pt.main, 0.82),
            radius=round(0.04 * pt.s),
        )
        pt.line([(x0 + 0.03, y0 + 0.035), (x1 - 0.03, y0 + 0.035)], pt.sec, 0.012)
    pt.brand(0.5, 0.5 if closure != "flap" else 0.52, 0.4, 0.11)


def _cap(pt: Painter, a: Mapping[str, str]) -> None:
    base = 0.70
    h = 0.46 if a["crown"] == "high" else 0.30
    crown = pt.box(0.05, base - h, 0.77, base + h)
    pt.body(lambda d: d.chord(crown, 180, 360, fill=255))
    edge = outline_colour(pt.main)
    top = (0.41, base - h)
    for x in (0.17, 0.65):
        pt.line([top, (x, base)], edge, 0.008)
    pt.d.rectangle(pt.box(0.05, base - 0.025, 0.77, base), fill=shade(pt.main, 0.7))
    r = 0.03
    pt.solid("ellipse", pt.box(top[0] - r, top[1] - r, top[0] + r, top[1] + r), pt.sec)
    if a["brim"] == "curved":
        brim = [
            (0.60, base - 0.03),
            (0.80, base - 0.02),
            (0.94, base + 0.06),
            (0.97, base + 0.14),
            (0.85, base + 0.10),
            (0.62, base + 0.04),
        ]
    else:
        brim = [(0.60, base - 0.03), (0.99, base - 0.03), (0.99, base + 0.03), (0.60, base + 0.03)]
    pt.solid("polygon", pt.p(brim), pt.sec)
    pt.brand(0.40, base - h * 0.40, 0.42, min(0.13, h * 0.36))


def _phone_case(pt: Painter, a: Mapping[str, str]) -> None:
    radius = round((0.09 if a["corners"] == "rounded" else 0.018) * pt.s)
    outer = pt.box(0.29, 0.05, 0.71, 0.95)
    pt.d.rounded_rectangle(
        outer, radius=radius, fill=pt.sec, outline=outline_colour(pt.sec), width=pt.lw
    )
    inner = pt.box(0.31, 0.065, 0.69, 0.935)
    pt.body(lambda d: d.rounded_rectangle(inner, radius=max(1, radius - pt.lw * 2), fill=255))
    lenses = {
        "single lens": (0.36, 0.11, 0.47, 0.22, [(0.415, 0.165)]),
        "dual lens": (0.35, 0.10, 0.46, 0.32, [(0.405, 0.155), (0.405, 0.265)]),
        "triple lens": (0.34, 0.10, 0.56, 0.32, [(0.395, 0.155), (0.395, 0.265), (0.505, 0.21)]),
    }
    x0, y0, x1, y1, centres = lenses[a["camera"]]
    bump_r = round((0.035 if a["corners"] == "rounded" else 0.01) * pt.s)
    pt.solid("rounded_rectangle", pt.box(x0, y0, x1, y1), pt.sec, radius=bump_r)
    for cx, cy in centres:
        r = 0.04
        pt.d.ellipse(
            pt.box(cx - r, cy - r, cx + r, cy + r),
            fill=(40, 40, 46),
            outline=(150, 150, 160),
            width=pt.lw,
        )
    pt.brand(0.5, 0.62, 0.3, 0.10)


def _lamp(pt: Painter, a: Mapping[str, str]) -> None:
    if a["base"] == "round":
        pt.solid("ellipse", pt.box(0.28, 0.85, 0.72, 0.95), pt.sec)
    else:
        pt.solid("rectangle", pt.box(0.33, 0.81, 0.67, 0.95), pt.sec)
    pt.solid("rectangle", pt.box(0.478, 0.44, 0.522, 0.86), pt.sec)
    shade_kind = a["shade"]
    glow = (255, 236, 170)
    if shade_kind == "cone":
        pts = pt.p([(0.36, 0.09), (0.64, 0.09), (0.81, 0.47), (0.19, 0.47)])
        pt.d.ellipse(pt.box(0.19, 0.44, 0.81, 0.50), fill=glow)
        pt.body(lambda d: d.polygon(pts, fill=255))
        half = 0.25
    elif shade_kind == "drum":
        pt.d.ellipse(pt.box(0.22, 0.43, 0.78, 0.49), fill=glow)
        pt.body(lambda d: d.rectangle(pt.box(0.22, 0.1, 0.78, 0.46), fill=255))
        half = 0.25
    else:  # dome
        pt.d.ellipse(pt.box(0.16, 0.44, 0.84, 0.50), fill=glow)
        pt.body(lambda d: d.chord(pt.box(0.16, 0.1, 0.84, 0.84), 180, 360, fill=255))
        half = 0.27
    pt.brand(0.5, 0.33, 2 * half * 0.75, 0.11)


DRAWERS: dict[str, Callable[[Painter, Mapping[str, str]], None]] = {
    "t-shirt": _t_shirt,
    "mug": _mug,
    "bottle": _bottle,
    "sneaker": _sneaker,
    "backpack": _backpack,
    "cap": _cap,
    "phone case": _phone_case,
    "lamp": _lamp,
}


def draw_item(attrs: Mapping[str, str], size: int, texture_seed: Sequence[int]) -> Image.Image:
    """One item of the product on a transparent ``size`` x ``size`` RGBA square.

    ``texture_seed`` fixes the camouflage blobs, so every photo of a product shows the same print.
    """
    category = attrs["category"]
    if category not in DRAWERS:
        raise ValueError(f"no drawing for category {category!r}; known: {sorted(DRAWERS)}")
    painter = Painter(size, attrs, texture_seed)
    DRAWERS[category](painter, attrs)
    return painter.img
